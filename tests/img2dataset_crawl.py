"""A real img2dataset crawl of local images served over HTTP on 127.0.0.1 (for tests/test_img2dataset.py).

The corpus mixes what a web crawl meets: good images, images img2dataset delivers but data prep filters or
rejects (too small, too elongated, empty caption), and URLs img2dataset itself fails on (404, a non-image body,
a truncated JPEG). Each case is named by its file name, so a test can say what should happen to it.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import subprocess
import sys
import threading
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# (file name, what the server sends, caption). Sizes are small so the crawl and data prep stay fast.
GOOD = [(f"good{i:02d}.jpg", ("jpeg", (72 + 4 * i, 80)), f"A photo of thing number {i}.") for i in range(24)]
CORPUS = GOOD + [
    ("small0.jpg", ("jpeg", (40, 40)), "a tiny image"),  # data prep: filtered too_small (min_size 64)
    ("small1.png", ("png", (50, 30)), "another tiny image"),
    ("wide0.jpg", ("jpeg", (400, 80)), "a wide banner"),  # data prep: filtered aspect_ratio (> 3)
    ("nocap0.jpg", ("jpeg", (96, 96)), "  "),  # data prep: rejected empty_caption
    ("nocap1.jpg", ("jpeg", (96, 96)), "!!!"),
    ("missing0.jpg", ("404", None), "never served"),  # img2dataset: failed_to_download (HTTP 404)
    ("missing1.jpg", ("404", None), "never served either"),
    ("html0.jpg", ("html", None), "a web page, not an image"),  # img2dataset: failed_to_resize
    ("html1.jpg", ("html", None), "another web page"),
    ("trunc0.jpg", ("truncated", (200, 200)), "half a jpeg"),  # cut after its header: undecodable
    ("trunc1.jpg", ("truncated", (160, 120)), "half a jpeg again"),
]


def _image_bytes(kind: str, size) -> bytes:
    w, h = size
    im = Image.new("RGB", size, ((w * 7) % 256, (h * 13) % 256, (w + h) % 256))
    for x in range(0, w, 8):  # some texture so that JPEG sizes differ per image
        im.putpixel((x, (x * 3) % h), (255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG" if kind == "png" else "JPEG", quality=90)
    return buf.getvalue()


def write_site(root: str) -> None:
    """The files the HTTP server serves (404 cases get no file)."""
    os.makedirs(root, exist_ok=True)
    for name, (kind, size), _ in CORPUS:
        if kind == "404":
            continue
        if kind == "html":
            data = b"<html><body>Not an image</body></html>"
        elif kind == "truncated":
            data = _image_bytes("jpeg", size)[:200]  # header and tables only, no scan data
        else:
            data = _image_bytes(kind, size)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output readable
        pass


@contextmanager
def serve(root: str):
    """An HTTP server on a free 127.0.0.1 port serving ``root``; yields its base URL; stopped on exit."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def write_url_list(path: str, base_url: str) -> None:
    pq.write_table(pa.table({"url": [f"{base_url}/{name}" for name, *_ in CORPUS],
                             "caption": [cap for *_, cap in CORPUS]}), path)


_CRAWL = """
import sys
from img2dataset import download
for fmt in ("webdataset", "parquet"):
    download(url_list=sys.argv[1], output_folder=f"{sys.argv[2]}/{fmt}", output_format=fmt, input_format="parquet",
             url_col="url", caption_col="caption", processes_count=1, thread_count=4, number_sample_per_shard=10,
             resize_mode="no", timeout=5, retries=0, enable_wandb=False, disallowed_header_directives=[])
"""


def crawl(url_list: str, output_root: str) -> None:
    """img2dataset into ``output_root/webdataset`` and ``output_root/parquet``, in one process of its own: its
    imports are heavy (a few seconds), and it forks workers of its own. Offline: no proxy, no wandb, no
    albumentations update check."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "no_proxy": "127.0.0.1",
           "NO_PROXY": "127.0.0.1"}
    r = subprocess.run([sys.executable, "-c", _CRAWL, url_list, output_root], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, f"img2dataset exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
