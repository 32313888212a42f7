"""A real MONAI Label server with the synthcp_pancreas app on 127.0.0.1, started with the README command
(``monailabel start_server --app apps/synthcp_pancreas --studies ... --conf models synthcp_pancreas
--conf models_dir ...``) on untrained tiny-profile weights; stopped by its process id."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .conftest import monailabel_or_skip

monailabel_or_skip()

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "apps" / "synthcp_pancreas"
METHODS = ("direct_prediction", "vae_alarm", "synthcp", "ensemble")
START_TIMEOUT = 240  # s; about 25 s on 2 busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method: str = "GET", data: bytes | None = None, headers=None, timeout: float = 300):
    """(status, content type, body) — 4xx/5xx answers are returned, not raised."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


def _form(params: dict) -> tuple[bytes, dict]:
    """A multipart form with the ``params`` field, as MONAI Label clients send it."""
    boundary = "synthcp3d-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
            f"--{boundary}--\r\n").encode()  # fmt: skip
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """Parts of a multipart/form-data answer by field name."""
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {p.get_param("name", header="content-disposition"): p.get_payload(decode=True) for p in msg.iter_parts()}


@pytest.fixture(scope="module")
def server(label_models, phantom_images, tmp_path_factory):
    """The server process and its base URL; the teardown stops it by pid and checks it is gone."""
    port = _free_port()
    studies = Path(next(iter(phantom_images.values()))).parent
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "2"}  # fmt: skip
    cmd = ["monailabel", "start_server", "--app", str(APP), "--studies", str(studies), "--conf", "models",
           "synthcp_pancreas", "--conf", "models_dir", str(label_models), "--conf", "device", "cpu",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if _request(f"{url}/info/", timeout=5)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() - t0 > START_TIMEOUT:
            proc.kill()
            pytest.fail(f"no answer on {url}/info/ after {START_TIMEOUT} s:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    yield {"url": url, "pid": proc.pid, "images": phantom_images, "models": label_models, "log": log}
    os.kill(proc.pid, signal.SIGTERM)  # stop it by its process id
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        pytest.fail("server ignored SIGTERM for 30 s")
    with socket.socket() as s:  # the port is released
        assert s.connect_ex(("127.0.0.1", port)) != 0


def _infer(server, model: str, image: str, output: str = "all", params: dict | None = None):
    body, headers = _form(params or {})
    return _request(f"{server['url']}/infer/{model}?image={image}&output={output}", "POST", body, headers)


def _check_alarm_json(res: dict, settings: dict, case_id: str) -> None:
    """The JSON fields and their ranges, the ensemble and interval recomputed by hand."""
    assert res["case_id"] == case_id and res["profile"] == "tiny"
    assert set(res["predicted"]) == {*METHODS, "ensemble_weighted", "ensemble_agreement", "msp", "entropy"}
    for c in ("pancreas", "tumour"):
        for m in METHODS:
            assert 0.0 <= res["predicted"][m][c] <= 1.0
        ens = (res["predicted"]["synthcp"][c] + res["predicted"]["vae_alarm"][c]) / 2
        assert res["predicted"]["ensemble"][c] == pytest.approx(ens)
        q = settings["conformal_q"][c]
        assert res["interval"][c] == pytest.approx([max(ens - q, 0.0), min(ens + q, 1.0)])
    assert res["coverage"] == pytest.approx(1 - settings["alpha"])
    assert res["review"] is (res["predicted"]["ensemble"]["tumour"] < settings["review_threshold"])
    assert res["message"].startswith(f"predicted tumour Dice {res['predicted']['ensemble']['tumour']:.2f}")
    assert ("REVIEW" in res["message"]) == res["review"]


def test_info_lists_the_models(server):
    status, _, body = _request(f"{server['url']}/info/")
    info = json.loads(body)
    assert status == 200 and set(info["models"]) == {"synthcp_pancreas", "synthcp_pancreas_error"}
    assert info["models"]["synthcp_pancreas"]["labels"] == {"pancreas": 1, "tumour": 2}
    assert info["models"]["synthcp_pancreas"]["dimension"] == 3
    assert info["datastore"]["total"] == len(server["images"])


def test_segmentation_on_the_input_grid_with_the_alarm(server, tmp_path):
    image_id, path = next(iter(server["images"].items()))
    status, ctype, body = _infer(server, "synthcp_pancreas", image_id)
    assert status == 200 and ctype.startswith("multipart/form-data"), body[:500]
    parts = _multipart(ctype, body)
    res = json.loads(parts["params"])
    _check_alarm_json(res, json.loads((server["models"] / "alarm_models.json").read_text()), image_id)
    assert res["output"] == "segmentation" and res["label_names"] == {"pancreas": 1, "tumour": 2}
    (tmp_path / "seg.nii.gz").write_bytes(parts["image"])
    seg, ref = nib.load(tmp_path / "seg.nii.gz"), nib.load(path)
    assert seg.shape == ref.shape and seg.get_data_dtype() == np.uint8
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    status, _, body = _infer(server, "synthcp_pancreas", image_id, output="json")
    assert status == 200 and json.loads(body)["predicted"] == res["predicted"] and json.loads(body)["cached"]


def test_error_map_levels_and_heatmap(server, tmp_path):
    image_id, path = list(server["images"].items())[1]
    status, _, body = _infer(server, "synthcp_pancreas_error", image_id, output="image")
    assert status == 200
    (tmp_path / "levels.nii.gz").write_bytes(body)
    status, ctype, body = _infer(server, "synthcp_pancreas_error", image_id, params={"heatmap": True})
    assert status == 200
    parts = _multipart(ctype, body)
    assert json.loads(parts["params"])["output"] == "error_map" and json.loads(parts["params"])["cached"]
    (tmp_path / "heat.nii.gz").write_bytes(parts["image"])
    ref = nib.load(path)
    levels, heat = nib.load(tmp_path / "levels.nii.gz"), nib.load(tmp_path / "heat.nii.gz")
    for vol in (levels, heat):
        assert vol.shape == ref.shape
        np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)
    h = np.asarray(heat.dataobj)
    assert heat.get_data_dtype() == np.float32 and 0.0 <= h.min() and h.max() <= 1.0
    want = (h >= 0.25).astype(np.uint8) + (h >= 0.5) + (h >= 0.75)
    assert levels.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(levels.dataobj), want)


def _form_with_label(params: dict, label: bytes) -> tuple[bytes, dict]:
    """``params`` plus a ``label`` file part, as a MONAI Label client uploads a segmentation."""
    boundary = "synthcp3d-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="label"; filename="label.nii.gz"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + label + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}  # fmt: skip


def _label_file(ref_path, tmp_path, values=(1, 2), shape=None) -> bytes:
    ref = nib.load(ref_path)
    lab = np.zeros(shape or ref.shape, np.uint8)
    lab[6:14, 6:14, 4:12] = values[0]
    lab[8:11, 8:11, 6:9] = values[1]
    nib.save(nib.Nifti1Image(lab, ref.affine), tmp_path / "sent.nii.gz")
    return (tmp_path / "sent.nii.gz").read_bytes()


def test_alarm_on_a_label_the_client_sends(server, tmp_path):
    image_id, path = list(server["images"].items())[2]
    sent = _label_file(path, tmp_path)
    body, headers = _form_with_label({}, sent)
    status, ctype, answer = _request(f"{server['url']}/infer/synthcp_pancreas?image={image_id}&output=all", "POST",
                                     body, headers)  # fmt: skip
    assert status == 200, answer[:500]
    parts = _multipart(ctype, answer)
    res = json.loads(parts["params"])
    assert res["segmentation"] == "client label" and res["status"] == "ok"
    _check_alarm_json(res, json.loads((server["models"] / "alarm_models.json").read_text()), image_id)
    (tmp_path / "back.nii.gz").write_bytes(parts["image"])
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "back.nii.gz").dataobj),
                                  np.asarray(nib.load(tmp_path / "sent.nii.gz").dataobj))  # the alarm is about it
    for bad, match in ((_label_file(path, tmp_path, values=(1, 9)), "label values [9] are outside"),
                       (_label_file(path, tmp_path, shape=(8, 8, 8)), "shape mismatch")):  # fmt: skip
        body, headers = _form_with_label({}, bad)
        status, _, answer = _request(f"{server['url']}/infer/synthcp_pancreas?image={image_id}", "POST", body,
                                     headers)  # fmt: skip
        assert status == 422 and match in json.loads(answer)["detail"], answer[:500]


def test_alarm_on_the_datastore_label(server, tmp_path):
    image_id, path = list(server["images"].items())[1]
    status, _, body = _infer(server, "synthcp_pancreas", image_id, output="json", params={"label_tag": "final"})
    assert status == 404 and "no label tagged 'final'" in json.loads(body)["detail"]
    sent = _label_file(path, tmp_path)
    boundary = "synthcp3d-test-boundary"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="label"; filename="{image_id}.nii.gz"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + sent + f"\r\n--{boundary}--\r\n".encode()
    status, _, answer = _request(f"{server['url']}/datastore/label?image={image_id}&tag=final", "PUT", form,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    assert status == 200, answer[:500]
    status, _, body = _infer(server, "synthcp_pancreas", image_id, output="json", params={"label_tag": "final"})
    assert status == 200, body[:500]
    assert json.loads(body)["segmentation"] == "client label"


def test_malformed_requests_get_a_clear_4xx(server):
    image_id = next(iter(server["images"]))
    status, _, body = _infer(server, "no_such_model", image_id)
    assert status == 404 and "unknown model 'no_such_model'" in json.loads(body)["detail"]
    assert "synthcp_pancreas" in json.loads(body)["detail"]
    status, _, body = _infer(server, "synthcp_pancreas", "no_such_image")
    assert status == 404 and "unknown image 'no_such_image'" in json.loads(body)["detail"]
    assert image_id in json.loads(body)["detail"]
    assert _request(f"{server['url']}/info/")[0] == 200  # still serving


def test_concurrent_requests(server):
    ids = list(server["images"])
    jobs = [("synthcp_pancreas", ids[2]), ("synthcp_pancreas_error", ids[2]), ("synthcp_pancreas", ids[0]),
            ("synthcp_pancreas", ids[2])]  # fmt: skip
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: _infer(server, *job, output="json"), jobs))
    assert [a[0] for a in answers] == [200] * len(jobs), [a[2][:300] for a in answers]
    res = [json.loads(a[2]) for a in answers]
    assert [r["case_id"] for r in res] == [j[1] for j in jobs]
    same = [r["predicted"] for r in res if r["case_id"] == ids[2]]
    assert all(p == same[0] for p in same)  # one image, one answer, whichever request ran it
    assert sum(not r["cached"] for r in res if r["case_id"] == ids[2]) == 1
