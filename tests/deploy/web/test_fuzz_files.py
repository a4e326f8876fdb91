"""Mutated PNG, TIFF and DICOM files (hypothesis, bounded examples): the API never answers 5xx, ``ccad
predict`` never prints a traceback and exits 0 or 2, and what one request allocates stays bounded
(tracemalloc's peak, which counts numpy's arrays, the bulk of a decoded image)."""

import io
import tracemalloc

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import GRADIENT, make_dicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ccad.cli import main
from ccad.deploy.web import ServeSettings, create_app


def _seeds(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("seeds")
    image = (GRADIENT.astype(np.uint16) * 64)[:, ::-1].copy()
    out = {}
    buffer = io.BytesIO()
    Image.fromarray(GRADIENT).save(buffer, format="PNG")
    out["png"] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="TIFF")
    out["tif"] = buffer.getvalue()
    out["dcm"] = make_dicom(folder / "seed.dcm", image, window=(2000, 4000)).read_bytes()
    return out


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _seeds(tmp_path_factory)


@pytest.fixture(scope="module")
def client(run_and_bundle):
    with TestClient(create_app(ServeSettings(run_and_bundle[1], max_pixels=4_000_000))) as c:
        yield c


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None, insert: bytes) -> bytes:
    """Byte flips at positions (mod the length), an optional truncation, and inserted bytes."""
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    if cut is not None:
        out = out[: max(1, cut % len(out))]
    if insert:
        middle = len(out) // 2
        out[middle:middle] = insert
    return bytes(out)


MUTATION = dict(
    kind=st.sampled_from(["png", "tif", "dcm"]),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    insert=st.binary(max_size=64),
)
#: What one request may allocate in Python and numpy: images are capped at 4 MP here (float64: 32 MB each).
REQUEST_BUDGET_MB = 256


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**MUTATION)
def test_the_api_never_answers_5xx(client, seeds, kind, edits, cut, insert):
    data = mutate(seeds[kind], edits, cut, insert)
    tracemalloc.start()
    try:
        r = client.post("/api/v1/predict", files=[("files", (f"x.{kind}", data, "application/octet-stream"))])
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert peak_mb < REQUEST_BUDGET_MB, peak_mb
    if r.status_code == 200:
        assert r.json()["results"][0]["predicted_class"] in ("covid", "normal")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**MUTATION)
def test_predict_never_prints_a_traceback(run_and_bundle, seeds, tmp_path_factory, capsys, kind, edits, cut, insert):
    path = tmp_path_factory.mktemp("fuzz") / f"x.{kind}"
    path.write_bytes(mutate(seeds[kind], edits, cut, insert))
    code = main(["predict", "--model", str(run_and_bundle[1]), str(path), "--format", "csv"])
    captured = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in captured.err + captured.out
    assert len(captured.out.strip().splitlines()) == 2  # the header and one row: a result or its error
