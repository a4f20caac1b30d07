"""The released checkpoints of mmsegmentation's context-head models: the zoo's data.

:data:`FAMILIES` names the six models: the head, its folder on the download server and its paper
name (mmseg's model name comes from :data:`isa_explorer.configs.HEAD_RECIPES`, its decode head
class from the head's entry in :mod:`isa_explorer.heads`). :data:`RELEASED` lists, per model,
every released checkpoint as ``(file, mIoU, mIoU ms+flip)``: the file name as served (the mmseg
0.x config name, the training date and the first 8 hex digits of the file's SHA-256) and the
published single-scale and multi-scale + flip validation mIoU (%; ``None``: not published).
Source: ``configs/{folder}/metafile.yaml`` of mmsegmentation 1.2.2
(tests/fixtures/context_heads_published.md, which ``tests/test_zoo_table.py`` compares every
entry with). Everything else an entry holds (dataset, crop, schedule, test mode) comes from the
run's recipe in :data:`isa_explorer.configs.CONFIGS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from isa_explorer import heads
from isa_explorer.configs import HEAD_RECIPES

#: Where mmsegmentation serves its released checkpoints: ``{root}/{folder}/{0.x name}/{file}``.
DOWNLOAD_ROOT = "https://download.openmmlab.com/mmsegmentation/v0.5"


@dataclass(frozen=True)
class Family:
    """One mmseg model (a decode head on the ResNetV1c-D8 backbone).

    Attributes:
        head: The head's registry name in ISA Explorer (``"da"``).
        folder: Its folder on the download server (``"danet"``; ``"nonlocal_net"`` for NL).
        title: The model's name in its paper (``"DANet"``).
        bare_aliases: Its short aliases also come without the model token
            (``cityscapes-r50``): ISANet's, named so before the zoo held other models.
    """

    head: str
    folder: str
    title: str
    bare_aliases: bool = False

    @property
    def model(self) -> str:
        """mmseg's model name (``"danet"``): the first word of its recipes' config names
        (:data:`isa_explorer.configs.HEAD_RECIPES`) and the model token of the zoo's aliases."""
        return HEAD_RECIPES[self.head][0]

    @property
    def head_type(self) -> str:
        """mmseg's decode head class (``"DAHead"``), as the head's registry entry names it."""
        return heads.get(self.head).mmseg.head_type

    @property
    def base_url(self) -> str:
        """The folder of its released checkpoints (``{base_url}/{0.x name}/{file}``)."""
        return f"{DOWNLOAD_ROOT}/{self.folder}"


#: The six models, in the zoo's order.
FAMILIES = (
    Family("isa", "isanet", "ISANet", bare_aliases=True),
    Family("nl", "nonlocal_net", "NonLocalNet"),
    Family("cc", "ccnet", "CCNet"),
    Family("da", "danet", "DANet"),
    Family("gc", "gcnet", "GCNet"),
    Family("ema", "emanet", "EMANet"),
)

#: mmseg model name -> its released checkpoints ``(file, mIoU, mIoU ms+flip)``, in the order of
#: mmseg's tables (the first of equal entries wins an alias).
RELEASED: dict[str, tuple[tuple[str, float, float | None], ...]] = {
    "isanet": (
        ("isanet_r50-d8_512x1024_40k_cityscapes_20210901_054739-981bd763.pth", 78.49, 79.44),
        ("isanet_r50-d8_512x1024_80k_cityscapes_20210901_074202-89384497.pth", 78.68, 80.25),
        ("isanet_r50-d8_769x769_40k_cityscapes_20210903_050200-4ae7e65b.pth", 78.70, 80.28),
        ("isanet_r50-d8_769x769_80k_cityscapes_20210903_101126-99b54519.pth", 79.29, 80.53),
        ("isanet_r101-d8_512x1024_40k_cityscapes_20210901_145553-293e6bd6.pth", 79.58, 81.05),
        ("isanet_r101-d8_512x1024_80k_cityscapes_20210901_145243-5b99c9b2.pth", 80.32, 81.58),
        ("isanet_r101-d8_769x769_40k_cityscapes_20210903_111320-509e7224.pth", 79.68, 80.95),
        ("isanet_r101-d8_769x769_80k_cityscapes_20210903_111319-24f71dfa.pth", 80.61, 81.59),
        ("isanet_r50-d8_512x512_80k_ade20k_20210903_124557-6ed83a0c.pth", 41.12, 42.35),
        ("isanet_r50-d8_512x512_160k_ade20k_20210903_104850-f752d0a3.pth", 42.59, 43.07),
        ("isanet_r101-d8_512x512_80k_ade20k_20210903_162056-68b235c2.pth", 43.51, 44.38),
        ("isanet_r101-d8_512x512_160k_ade20k_20210903_211431-a7879dcd.pth", 43.80, 45.40),
        ("isanet_r50-d8_512x512_20k_voc12aug_20210901_164838-79d59b80.pth", 76.78, 77.79),
        ("isanet_r50-d8_512x512_40k_voc12aug_20210901_151349-7d08a54e.pth", 76.20, 77.22),
        ("isanet_r101-d8_512x512_20k_voc12aug_20210901_115805-3ccbf355.pth", 78.46, 79.16),
        ("isanet_r101-d8_512x512_40k_voc12aug_20210901_145814-bc71233b.pth", 78.12, 79.04),
    ),
    "nonlocal": (
        ("nonlocal_r50-d8_512x1024_40k_cityscapes_20200605_210748-c75e81e3.pth", 78.24, None),
        ("nonlocal_r50-d8_512x1024_80k_cityscapes_20200607_193518-d6839fae.pth", 78.01, None),
        ("nonlocal_r50-d8_769x769_40k_cityscapes_20200530_045243-82ef6749.pth", 78.33, 79.92),
        ("nonlocal_r50-d8_769x769_80k_cityscapes_20200607_193506-1f9792f6.pth", 79.05, 80.68),
        ("nonlocal_r101-d8_512x1024_40k_cityscapes_20200605_210748-d63729fa.pth", 78.66, None),
        ("nonlocal_r101-d8_512x1024_80k_cityscapes_20200607_183411-32700183.pth", 78.93, None),
        ("nonlocal_r101-d8_769x769_40k_cityscapes_20200530_045348-8fe9a9dc.pth", 78.57, 80.29),
        ("nonlocal_r101-d8_769x769_80k_cityscapes_20200607_183428-0e1fa4f9.pth", 79.40, 80.85),
        ("nonlocal_r50-d8_512x512_80k_ade20k_20200615_015801-5ae0aa33.pth", 40.75, 42.05),
        ("nonlocal_r50-d8_512x512_160k_ade20k_20200616_005410-baef45e3.pth", 42.03, 43.04),
        ("nonlocal_r101-d8_512x512_80k_ade20k_20200615_015758-24105919.pth", 42.90, 44.27),
        ("nonlocal_r101-d8_512x512_160k_ade20k_20210827_221502-7881aa1a.pth", 44.63, 45.79),
        ("nonlocal_r50-d8_512x512_20k_voc12aug_20200617_222613-07f2a57c.pth", 76.20, 77.12),
        ("nonlocal_r50-d8_512x512_40k_voc12aug_20200614_000028-0139d4a9.pth", 76.65, 77.47),
        ("nonlocal_r101-d8_512x512_20k_voc12aug_20200617_222615-948c68ab.pth", 78.15, 78.86),
        ("nonlocal_r101-d8_512x512_40k_voc12aug_20200614_000028-7e5ff470.pth", 78.27, 79.12),
    ),
    "ccnet": (
        ("ccnet_r50-d8_512x1024_40k_cityscapes_20200616_142517-4123f401.pth", 77.76, 78.87),
        ("ccnet_r50-d8_512x1024_80k_cityscapes_20200617_010421-869a3423.pth", 79.03, 80.16),
        ("ccnet_r50-d8_769x769_40k_cityscapes_20200616_145125-76d11884.pth", 78.46, 79.93),
        ("ccnet_r50-d8_769x769_80k_cityscapes_20200617_010421-73eed8ca.pth", 79.29, 81.08),
        ("ccnet_r101-d8_512x1024_40k_cityscapes_20200616_142540-a3b84ba6.pth", 76.35, 78.19),
        ("ccnet_r101-d8_512x1024_80k_cityscapes_20200617_203935-ffae8917.pth", 78.87, 79.90),
        ("ccnet_r101-d8_769x769_40k_cityscapes_20200617_101428-4f57c8d0.pth", 76.94, 78.62),
        ("ccnet_r101-d8_769x769_80k_cityscapes_20200618_011502-ad3cd481.pth", 79.45, 80.66),
        ("ccnet_r50-d8_512x512_80k_ade20k_20200615_014848-aa37f61e.pth", 41.78, 42.98),
        ("ccnet_r50-d8_512x512_160k_ade20k_20200616_084435-7c97193b.pth", 42.08, 43.13),
        ("ccnet_r101-d8_512x512_80k_ade20k_20200615_014848-1f4929a3.pth", 43.97, 45.13),
        ("ccnet_r101-d8_512x512_160k_ade20k_20200616_000644-e849e007.pth", 43.71, 45.04),
        ("ccnet_r50-d8_512x512_20k_voc12aug_20200617_193212-fad81784.pth", 76.17, 77.51),
        ("ccnet_r50-d8_512x512_40k_voc12aug_20200613_232127-c2a15f02.pth", 75.96, 77.04),
        ("ccnet_r101-d8_512x512_20k_voc12aug_20200617_193212-0007b61d.pth", 77.27, 79.02),
        ("ccnet_r101-d8_512x512_40k_voc12aug_20200613_232127-c30da577.pth", 77.87, 78.90),
    ),
    "danet": (
        ("danet_r50-d8_512x1024_40k_cityscapes_20200605_191324-c0dbfa5f.pth", 78.74, None),
        ("danet_r50-d8_512x1024_80k_cityscapes_20200607_133029-2bfa2293.pth", 79.34, None),
        ("danet_r50-d8_769x769_40k_cityscapes_20200530_025703-76681c60.pth", 78.88, 80.62),
        ("danet_r50-d8_769x769_80k_cityscapes_20200607_132954-495689b4.pth", 79.27, 80.96),
        ("danet_r101-d8_512x1024_40k_cityscapes_20200605_200831-c57a7157.pth", 80.52, None),
        ("danet_r101-d8_512x1024_80k_cityscapes_20200607_132918-955e6350.pth", 80.41, None),
        ("danet_r101-d8_769x769_40k_cityscapes_20200530_025717-dcb7fd4e.pth", 79.88, 81.47),
        ("danet_r101-d8_769x769_80k_cityscapes_20200607_132918-f3a929e7.pth", 80.47, 82.02),
        ("danet_r50-d8_512x512_80k_ade20k_20200615_015125-edb18e08.pth", 41.66, 42.90),
        ("danet_r50-d8_512x512_160k_ade20k_20200616_082340-9cb35dcd.pth", 42.45, 43.25),
        ("danet_r101-d8_512x512_80k_ade20k_20200615_015126-d0357c73.pth", 43.64, 45.19),
        ("danet_r101-d8_512x512_160k_ade20k_20200616_082348-23bf12f9.pth", 44.17, 45.02),
        ("danet_r50-d8_512x512_20k_voc12aug_20200618_070026-9e9e3ab3.pth", 74.45, 75.69),
        ("danet_r50-d8_512x512_40k_voc12aug_20200613_235526-426e3a64.pth", 76.37, 77.29),
        ("danet_r101-d8_512x512_20k_voc12aug_20200618_070026-d48d23b2.pth", 76.02, 77.23),
        ("danet_r101-d8_512x512_40k_voc12aug_20200613_223031-788e232a.pth", 76.51, 77.32),
    ),
    "gcnet": (
        ("gcnet_r50-d8_512x1024_40k_cityscapes_20200618_074436-4b0fd17b.pth", 77.69, 78.56),
        ("gcnet_r50-d8_512x1024_80k_cityscapes_20200618_074450-ef8f069b.pth", 78.48, 80.01),
        ("gcnet_r50-d8_769x769_40k_cityscapes_20200618_182814-a26f4471.pth", 78.12, 80.09),
        ("gcnet_r50-d8_769x769_80k_cityscapes_20200619_092516-4839565b.pth", 78.68, 80.66),
        ("gcnet_r101-d8_512x1024_40k_cityscapes_20200618_074436-5e62567f.pth", 78.28, 79.34),
        ("gcnet_r101-d8_512x1024_80k_cityscapes_20200618_074450-778ebf69.pth", 79.03, 79.84),
        ("gcnet_r101-d8_769x769_40k_cityscapes_20200619_092550-ca4f0a84.pth", 78.95, 80.71),
        ("gcnet_r101-d8_769x769_80k_cityscapes_20200619_092628-8e043423.pth", 79.18, 80.71),
        ("gcnet_r50-d8_512x512_80k_ade20k_20200614_185146-91a6da41.pth", 41.47, 42.85),
        ("gcnet_r50-d8_512x512_160k_ade20k_20200615_224122-d95f3e1f.pth", 42.37, 43.52),
        ("gcnet_r101-d8_512x512_80k_ade20k_20200615_020811-c3fcb6dd.pth", 42.82, 44.54),
        ("gcnet_r101-d8_512x512_160k_ade20k_20200615_225406-615528d7.pth", 43.69, 45.21),
        ("gcnet_r50-d8_512x512_20k_voc12aug_20200617_165701-3cbfdab1.pth", 76.42, 77.51),
        ("gcnet_r50-d8_512x512_40k_voc12aug_20200613_195105-9797336d.pth", 76.24, 77.63),
        ("gcnet_r101-d8_512x512_20k_voc12aug_20200617_165713-6c720aa9.pth", 77.41, 78.56),
        ("gcnet_r101-d8_512x512_40k_voc12aug_20200613_185806-1e38208d.pth", 77.84, 78.59),
    ),
    "emanet": (
        ("emanet_r50-d8_512x1024_80k_cityscapes_20200901_100301-c43fcef1.pth", 77.59, 79.44),
        ("emanet_r50-d8_769x769_80k_cityscapes_20200901_100301-16f8de52.pth", 79.33, 80.49),
        ("emanet_r101-d8_512x1024_80k_cityscapes_20200901_100301-2d970745.pth", 79.10, 81.21),
        ("emanet_r101-d8_769x769_80k_cityscapes_20200901_100301-47a324ce.pth", 79.62, 81.00),
    ),
}
