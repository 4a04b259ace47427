"""docs/review.md's Label Studio set-up against a real Label Studio server (run by hand; not a
test: it installs Label Studio, a heavy dependency, into a venv of its own).

    .venv/bin/python bench/check_label_studio.py [--work /tmp/segops_label_studio] [--images 4]
        [--venv bench/out/label-studio-venv] [--version 1.23.2]

1. Creates (or reuses) ``--venv`` with ``pip install label-studio==VERSION 'sentry-sdk<3'``
   (the Python of this venv; why the pin: :func:`ensure_venv`).
2. A tiny segops run: ``segops synth`` -> ``prepare`` -> a small U-Net (``train``) -> ``infer
   --split val`` -> ``review select`` -> ``review export`` with its defaults.
3. Starts ``label-studio start`` on 127.0.0.1 with a fresh data directory and exactly the
   variables docs/review.md gives: local files served, the document root the dataset root DATA;
   a user and a legacy API token created from ``LABEL_STUDIO_USERNAME`` / ``_PASSWORD`` /
   ``_USER_TOKEN`` (+ ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN``), so nothing is asked.
4. Over the REST API: creates a project with ``label_studio_config.xml``, checks that a local
   storage at the document root is refused (Label Studio's rule) and adds the one docs/review.md
   gives (``DATA/leftImg8bit``), imports ``label_studio_tasks.json``, and GETs every task's image
   URL as the browser does (logged-in session) and with the token: each must answer 200 with the
   file's bytes. It also GETs the URLs the export wrote before (``?d=<city>/<file>``) and prints
   what they answer (404).
5. Submits one annotation per task made from its prediction (the first task also gets a car
   painted over a box, through segops' brush RLE), exports the project as JSON over the API and
   runs ``segops review import`` on that file: every labelIds PNG must equal the predicted mask
   (+ the box) on every pixel.

Prints a summary; exits 1 on any failure. The server is stopped at the end (``--keep`` leaves it
running and prints its address, user and password, to look at the tasks in a browser).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
SEGOPS = str(Path(sys.executable).with_name("segops"))
USER, PASSWORD, TOKEN = "segops@example.com", "segops-bench-password", "segopsbenchtoken0123456789"
CAR_BOX = (slice(8, 24), slice(16, 56))  # rows, columns painted 'car' in the first task


class Failed(RuntimeError):
    pass


def step(name: str, t0: float, timings: dict[str, float]) -> None:
    timings[name] = time.perf_counter() - t0
    print(f"  {name:<28}{timings[name]:7.1f} s", flush=True)


def ensure_venv(venv: Path, version: str) -> str:
    """The venv with Label Studio (pip is a no-op when it is there). ``sentry-sdk<3``: Label
    Studio 1.23 asks for ``sentry-sdk>=2.16`` and passes ``send_default_pii``, which sentry-sdk
    3.0 refuses (``TypeError: Unknown option 'send_default_pii'``: the server does not start)."""
    if not (venv / "bin" / "pip").exists():
        subprocess.run(
            [getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True
        )
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"label-studio=={version}", "sentry-sdk<3"], check=True
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import label_studio; print(label_studio.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def segops(*args: str) -> str:
    print("$ segops " + " ".join(args), flush=True)
    result = subprocess.run([SEGOPS, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise Failed(f"segops {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def segops_run(work: Path, images: int) -> tuple[Path, Path]:
    """A tiny dataset, model and infer run, its selection exported with the defaults."""
    data, infer = work / "data", work / "infer"
    segops("synth", str(data), "--train", "8", "--val", str(images), "--test", "0", "--size", "64x128")
    segops("prepare", str(data), str(work / "prepared"))
    tiny = "--epochs 2 --crop 64x128 --model unet --depth 3 --base-filters 8 --batch-size 4 --lr 3e-3 --no-progress"
    segops("train", str(work / "prepared"), str(work / "model"), *tiny.split())
    segops("infer", str(work / "model"), str(data), str(infer), "--split", "val")
    segops("review", "select", str(infer), "--random", str(images))
    print(segops("review", "export", str(infer)), end="")
    return data, infer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ls_environment(data: Path, ls_data: Path) -> dict[str, str]:
    """The variables docs/review.md gives, plus the non-interactive user and token."""
    return os.environ | {
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(data),
        "LABEL_STUDIO_USERNAME": USER,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_BASE_DATA_DIR": str(ls_data),
    }


def start_server(venv: Path, data: Path, work: Path) -> tuple[subprocess.Popen, str, Path]:
    ls_data, log = work / "label-studio-data", work / "label-studio.log"
    port = free_port()
    cmd = [
        str(venv / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(ls_data),
    ]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(
        cmd,
        env=ls_environment(data, ls_data),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # its own process group, stopped by its id
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failed(f"label-studio exited {proc.returncode}; its log: {log}")
        try:
            if requests.get(url + "/health", timeout=5).status_code == 200:
                return proc, url, log
        except requests.ConnectionError:
            pass
        time.sleep(2)
    raise Failed(f"label-studio did not answer /health within 600 s; its log: {log}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Api:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {TOKEN}"

    def call(
        self, method: str, path: str, want: int | tuple[int, ...] = (200, 201), **kw
    ) -> requests.Response:
        response = self.http.request(method, self.url + path, timeout=120, **kw)
        if response.status_code not in ((want,) if isinstance(want, int) else want):
            raise Failed(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response


def browser_session(url: str) -> requests.Session:
    """Logged in through the login form, as a person's browser is (session cookie, no token)."""
    session = requests.Session()
    session.get(url + "/user/login/", timeout=30)
    form = {"email": USER, "password": PASSWORD, "csrfmiddlewaretoken": session.cookies.get("csrftoken", "")}
    response = session.post(
        url + "/user/login/",
        data=form,
        headers={"Referer": url + "/user/login/"},
        timeout=30,
        allow_redirects=False,
    )
    if response.status_code != 302 or "sessionid" not in session.cookies:
        raise Failed(f"login form: {response.status_code}, cookies {sorted(session.cookies.keys())}")
    return session


def predicted(infer: Path, row: dict) -> np.ndarray:
    from segops.core import imageio
    from segops.inference.discovery import WorkItem
    from segops.inference.masks import mask_paths

    return imageio.decode_label_png(
        Path(mask_paths(str(infer), WorkItem(row["path"], row["rel_path"]))["trainIds"]).read_bytes()
    )


def check(args: argparse.Namespace) -> dict:
    from segops.core import imageio, labels
    from segops.inference.discovery import cityscapes_label_for
    from segops.review.brush import mask_to_rle
    from segops.review.select import read_selection

    work = Path(args.work).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    timings: dict[str, float] = {}
    facts: dict = {}
    t0 = time.perf_counter()
    facts["label_studio"] = ensure_venv(Path(args.venv).resolve(), args.version)
    step("label-studio venv", t0, timings)

    t0 = time.perf_counter()
    data, infer = segops_run(work, args.images)
    step("segops synth .. export", t0, timings)
    review = infer / "review"
    tasks = json.loads((review / "label_studio_tasks.json").read_text())
    rows = {r["path"]: r for r in read_selection(str(review / "selection.parquet")).to_pylist()}

    t0 = time.perf_counter()
    proc, url, log = start_server(Path(args.venv).resolve(), data, work)
    step("label-studio start", t0, timings)
    try:
        api = Api(url)
        t0 = time.perf_counter()
        project = api.call(
            "POST",
            "/api/projects",
            json={"title": "segops review", "label_config": (review / "label_studio_config.xml").read_text()},
        ).json()
        pid = project["id"]
        refused = api.call(
            "POST",
            "/api/storages/localfiles/validate",
            want=400,
            json={"project": pid, "path": str(data), "title": "root"},
        ).text
        if "cannot be the same as" not in refused:
            raise Failed(
                f"a storage at the document root: expected Label Studio's refusal, got {refused[:300]}"
            )
        facts["storage_at_root"] = "refused"
        storage = {
            "project": pid,
            "path": str(data / "leftImg8bit"),
            "title": "segops images",
            "use_blob_urls": False,
        }
        api.call("POST", "/api/storages/localfiles/validate", json=storage)
        api.call("POST", "/api/storages/localfiles/", json=storage)
        imported = api.call("POST", f"/api/projects/{pid}/import", json=tasks).json()
        if imported.get("task_count") != len(tasks) or imported.get("prediction_count") != len(tasks):
            raise Failed(f"import answered {imported}, expected {len(tasks)} tasks with one prediction each")
        step("project, storage, import", t0, timings)

        t0 = time.perf_counter()
        listed = api.call(
            "GET", "/api/tasks", params={"project": pid, "page_size": 1000, "fields": "all"}
        ).json()
        ls_tasks = listed["tasks"] if isinstance(listed, dict) else listed
        if len(ls_tasks) != len(tasks):
            raise Failed(f"the project lists {len(ls_tasks)} tasks, {len(tasks)} imported")
        browser = browser_session(url)
        answers: dict[str, list] = {"session": [], "token": [], "old": []}
        for task in ls_tasks:
            image_url, path = task["data"]["image"], Path(task["data"]["segops_path"])
            full = image_url if image_url.startswith("http") else url + image_url
            for who, http in (("session", browser), ("token", api.http)):
                response = http.get(full, timeout=30)
                answers[who].append(response.status_code)
                if response.status_code != 200 or response.content != path.read_bytes():
                    raise Failed(
                        f"{who}: GET {image_url} -> {response.status_code}, {len(response.content)} bytes "
                        f"(file {path.stat().st_size} bytes)"
                    )
            old_url = (
                url + "/data/local-files/?d=" + rows[str(path)]["rel_path"]
            )  # the export before this set-up
            answers["old"].append(browser.get(old_url, timeout=30).status_code)
        facts["image_urls"] = {
            k: f"{sum(c == 200 for c in v)}/{len(v)} x 200"
            if k != "old"
            else ", ".join(sorted({str(c) for c in v}))
            for k, v in answers.items()
        }
        step("image URLs", t0, timings)

        t0 = time.perf_counter()
        for i, task in enumerate(ls_tasks):
            (prediction,) = task["predictions"]
            result = list(prediction["result"])
            if i == 0:
                facts["box_task"] = task["id"]
                h, w = result[0]["original_height"], result[0]["original_width"]
                box = np.zeros((h, w), bool)
                box[CAR_BOX] = True
                result.append(
                    {
                        **result[0],
                        "id": "fix",
                        "value": {"format": "rle", "rle": mask_to_rle(box), "brushlabels": ["car"]},
                    }
                )
            api.call(
                "POST",
                f"/api/tasks/{task['id']}/annotations/",
                json={"result": result, "was_cancelled": False, "parent_prediction": prediction["id"]},
            )
        export = work / "label_studio_export.json"
        export.write_bytes(
            api.call("GET", f"/api/projects/{pid}/export", params={"exportType": "JSON"}).content
        )
        step("annotate, export", t0, timings)
    finally:
        if args.keep:
            print(f"label-studio left running at {url} (user {USER}, password {PASSWORD}, pid {proc.pid})")
        else:
            stop_server(proc)

    t0 = time.perf_counter()
    exported = json.loads(export.read_text())
    print(segops("review", "import", str(export)), end="")
    equal = 0
    for task in exported:
        path = task["data"]["segops_path"]
        expected = predicted(infer, rows[path])
        if task["id"] == facts["box_task"]:
            before = expected.copy()
            expected[CAR_BOX] = labels.NAME_TO_LABEL["car"].train_id
            if (before == expected).all():
                raise Failed("the model predicts car over the whole box: the correction would change nothing")
        written = imageio.decode_label_png(Path(cityscapes_label_for(path)).read_bytes())
        differ = int((written != labels.to_label_ids(expected)).sum())
        if differ:
            raise Failed(f"{cityscapes_label_for(path)}: {differ} pixel(s) differ from the prediction")
        equal += 1
    facts["imported_equal"] = (
        f"{equal}/{len(tasks)} labelIds PNGs equal the prediction (+ the car box in the first)"
    )
    step("review import, compare", t0, timings)
    facts["timings"] = timings
    return facts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="/tmp/segops_label_studio", help="emptied and rewritten")
    parser.add_argument("--venv", default=str(ROOT / "bench" / "out" / "label-studio-venv"))
    parser.add_argument("--version", default="1.23.2")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="leave the server running")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        facts = check(args)
    except Failed as exc:
        print(f"FAILED: {exc}")
        return 1
    print(f"\nLabel Studio {facts['label_studio']} on loopback, {args.images} task(s):")
    print(f"  local storage at the document root   {facts['storage_at_root']} (as Label Studio's rule says)")
    print(f"  image URLs, browser session          {facts['image_urls']['session']}")
    print(f"  image URLs, API token                {facts['image_urls']['token']}")
    print(f"  URLs as exported before (?d=<city>/) {facts['image_urls']['old']}")
    print(f"  review import                        {facts['imported_equal']}")
    print(f"OK in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
