"""Class names and palettes of the supported datasets (mmsegmentation's lists)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on a dataset needs to know about it.

    Args:
        name: Dataset name as given to :func:`isa_explorer.data.build_dataset`.
        class_names: One name per class id ``0..K-1``.
        palette: One RGB colour per class id.
        ignore_index: Mask value of pixels that carry no label.
        image_mode: ``"rgb"`` (8-bit RGB images) or ``"raw"`` (the files' own bands and values).
        mean: Per-channel mean a model of this data normalises with (``None``: the model's
            default, mmseg's ImageNet values).
        std: Per-channel std, with ``mean``.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255
    image_mode: str = "rgb"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names but {len(self.palette)} colours"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.class_names)


# fmt: off
CITYSCAPES_INFO = DatasetInfo(
    name="cityscapes",
    class_names=(
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    ),
    palette=(
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ),
)

ADE20K_INFO = DatasetInfo(
    name="ade20k",
    class_names=(
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
        "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
        "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
        "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
        "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
        "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
        "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
        "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
        "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
        "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
        "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
        "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
        "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
        "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
        "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
        "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
        "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
        "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
    ),
    palette=(
        (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
        (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
        (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
        (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
        (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
        (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
        (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
        (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
        (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
        (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
        (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
        (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
        (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
        (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
        (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
        (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
        (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
        (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
        (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
        (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
        (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
        (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
        (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
        (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
        (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
    ),
)

VOC_INFO = DatasetInfo(
    name="voc",
    class_names=(
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
        "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
        "sheep", "sofa", "train", "tvmonitor",
    ),
    palette=(
        (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
        (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0),
        (64, 0, 128), (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0),
        (0, 192, 0), (128, 192, 0), (0, 64, 128),
    ),
)

#: The synthetic long-range-context scenes (:mod:`isa_explorer.data.synthetic`).
SYNTHETIC_INFO = DatasetInfo(
    name="synthetic-context",
    class_names=(
        "background", "cue-red", "cue-blue", "object-red-context", "object-blue-context",
        "green-disc", "yellow-bar",
    ),
    palette=(
        (0, 0, 0), (220, 40, 40), (40, 80, 220), (255, 150, 150), (150, 185, 255), (40, 180, 60),
        (230, 210, 40),
    ),
)
# fmt: on

#: Other names accepted for the datasets (``"voc-aug"`` is VOC trained on the SBD-augmented split).
ALIASES = {"voc-aug": "voc", "voc2012": "voc", "ade": "ade20k", "ade20k-150": "ade20k"}


def get_info(name: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` of a dataset by name.

    Args:
        name: ``"cityscapes"``, ``"ade20k"``, ``"voc"`` (or ``"voc-aug"``) or
            ``"synthetic-context"`` (case-insensitive).

    Raises:
        ValueError: If the name is not a known dataset.
    """
    key = ALIASES.get(name.lower(), name.lower())
    infos = {i.name: i for i in (CITYSCAPES_INFO, ADE20K_INFO, VOC_INFO, SYNTHETIC_INFO)}
    if key not in infos:
        known = sorted([*infos, *ALIASES])
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(known)}")
    return infos[key]
