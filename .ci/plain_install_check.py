"""Run inside a venv holding only `pip install .`: predict and serve work, TensorFlow is never there."""

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

bundle, data = Path(sys.argv[1]), Path(sys.argv[2])
CCAD = [sys.executable, "-m", "ccad"]
for module in ("tensorflow", "keras", "ray"):
    assert importlib.util.find_spec(module) is None, f"{module} is in the plain install"

import ccad.deploy.web  # noqa: E402,F401
import ccad.screening.results  # noqa: E402,F401

assert "tensorflow" not in sys.modules and "keras" not in sys.modules

done = subprocess.run(CCAD + ["predict", "--model", str(bundle), str(data / "covid"), "--format", "json"],
                      capture_output=True, text=True)
assert done.returncode == 0, done.stderr
results = json.loads(done.stdout)
assert len(results) == 12 and all(r.get("predicted_class") in ("covid", "normal") for r in results), results[:2]

# the model shipped in the package: predict with no --model
done = subprocess.run(CCAD + ["predict", str(sorted((data / "normal").glob("*.png"))[0]), "--format", "json"],
                      capture_output=True, text=True)
assert done.returncode == 0 and "using the model shipped with ccad" in done.stderr, done.stderr
assert json.loads(done.stdout)[0]["predicted_class"] in ("covid", "normal"), done.stdout
import ccad.deploy.pacs.listener  # noqa: E402,F401  (the DICOM listener is part of the plain install)

assert "tensorflow" not in sys.modules

done = subprocess.run(CCAD + ["train", "--data", str(data / "manifest.csv"), "--out", str(data.parent / "x")],
                      capture_output=True, text=True)
assert done.returncode == 2 and "needs the train extra" in done.stderr and "Traceback" not in done.stderr, done.stderr

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen(CCAD + ["serve", "--model", str(bundle), "--port", str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
try:
    for _ in range(120):
        try:
            assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
            break
        except OSError:
            time.sleep(0.5)
    image = sorted((data / "normal").glob("*.png"))[0].read_bytes()
    body = (b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
            + image + b"\r\n--x--\r\n")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/predict", data=body,
                                     headers={"Content-Type": "multipart/form-data; boundary=x"})
    answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    assert answer["results"][0]["predicted_class"] in ("covid", "normal"), answer
finally:
    server.terminate()
    server.wait(10)
print("plain install: predict (also with the shipped model), serve and the DICOM listener work without TensorFlow; "
      "train names its extra")
