"""``/compare`` through gradio_client: parameters by keyword, the library's numbers, the
project's messages for bad images, unknown heads and clicks off the image, and a server that
keeps answering."""

from __future__ import annotations

import numpy as np
import pytest
from test_app_client import _bad_files, client, scene, server  # noqa: F401  (fixtures)

from isa_explorer.explorer.compare import Comparison
from isa_explorer.explorer.uploads import load_image_file

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:::gradio.queueing")]


def _compare(client, path, **kwargs):  # noqa: F811
    from gradio_client import handle_file

    args = dict(image=handle_file(str(path)), x=100, y=60, heads=["isa", "cc", "fcn"])
    return client.predict(**{**args, **kwargs}, api_name="/compare")


def test_compare_parameters_are_documented_by_keyword(client):  # noqa: F811
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    params = endpoint["/compare"]["parameters"]
    assert [p["parameter_name"] for p in params] == [
        "image",
        "x",
        "y",
        "heads",
        "image_means",
        "costs",
    ]
    for p in params[-2:]:
        assert p["parameter_has_default"] and p["parameter_default"] is False


def test_compare_gives_the_librarys_numbers(client, scene):  # noqa: F811
    out = _compare(client, scene, image_means=True)
    cmp = Comparison()
    cmp.load_checked("lib", load_image_file(scene), "api", ["isa", "cc", "fcn"])
    cmp.image_averages("lib")
    click = cmp.click("lib", 100, 60)
    assert out["query"] == [100, 60] and out["image_size"] == {"width": 256, "height": 128}
    assert [h["name"] for h in out["heads"]] == ["isa", "cc", "fcn"]
    for got, head in zip(out["heads"], click.heads, strict=True):
        assert got["predicted_class"] == head.class_name
        assert got["statistics"] == {k: round(v, 6) for k, v in head.statistics.items()}
        if head.maps is None:
            assert got["image_statistics"] is None and "maps" not in got
            continue
        assert got["feature_cell"] == [12, 7] and got["stride"] == 8
        assert got["image_statistics"]["means"] == {
            k: round(v, 6) for k, v in click.state.averages[head.name].means.items()
        }
        final = np.asarray(got["maps"][head.final_map])
        assert np.allclose(final, head.maps[head.final_map].numpy(), atol=1e-8)
        assert "share_true" not in got["statistics"]  # an upload: no truth
    assert out["colour_scale_log10"] == [round(v, 4) for v in click.scale()]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": ["isa", "vit"]}, r"unknown head 'vit': choose from isa, "),
        ({"heads": ["isa"]}, r"choose 2 to 4 heads to compare, got 1"),
        ({"heads": ["isa", "nl", "cc", "da", "gc"]}, r"choose 2 to 4 heads to compare, got 5"),
        ({"heads": "isa,isa"}, r"each head once"),
        ({"heads": {"a": 1}}, r"heads must be a list of names"),
        ({"x": 256}, r"pixel \(x=256, y=60\) is outside the 256x128 image: use 0 <= x < 256"),
        ({"y": -1}, r"is outside the 256x128 image"),
        ({"x": 3.5}, r"must be whole numbers, got x=3.5: coordinates are not rounded"),
        ({"x": None}, r"give both pixel coordinates x and y: x is missing"),
    ],
)
def test_bad_requests_get_the_projects_message(client, scene, kwargs, message):  # noqa: F811
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        _compare(client, scene, **kwargs)


def test_bad_images_get_the_projects_message_and_the_server_keeps_answering(
    client,  # noqa: F811
    scene,  # noqa: F811
    tmp_path,
    capsys,
):
    from gradio_client.exceptions import AppError

    for case, (path, message) in _bad_files(tmp_path, scene).items():
        with pytest.raises(AppError, match=message) as err:
            _compare(client, path)
        assert "upstream" not in str(err.value), case
    out = _compare(client, scene, heads="nl, gc")  # a comma-separated list works too
    assert [h["name"] for h in out["heads"]] == ["nl", "gc"]
    assert "Traceback" not in capsys.readouterr().err
