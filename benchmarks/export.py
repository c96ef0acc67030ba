"""Writing a training set: faces/s and MB/s of faceetl's exports, locally and to S3, against
Python's ``tarfile`` writing the same bytes in one process (the I/O bound).

One run, in a temporary folder (removed at the end unless ``--keep``):
- faces: ``extract_faces`` (retinaface) once on the bundled photos and
  ``../shared/images/group``, then the ok faces repeated, each copy under another path (so every
  sample key differs), to ``--n`` faces, written as a faces dataset of ``--parts`` parts (crops
  inside, as ``write_faces`` writes them);
- ``tarfile``: the samples' bytes (crop, JSON, class index: what the export's shards hold, read
  back from them) prepared in memory, then written by ``tarfile`` into shards of ``--shard-size``
  in one process: local files, and to S3 one ``put`` per shard (built in memory);
- ``faceetl``: ``write_webdataset(dataset URL, ...)`` from that dataset on Dask's threaded
  scheduler (the survey pass included), locally and to S3; ``write_huggingface`` and
  ``write_imagefolder`` locally, for comparison;
- S3 is moto's server on localhost (``moto_server``, as the tests start it), through s3fs.

MB/s counts the bytes of the files written (tar shards, or parquet files, or image files).

    FACEETL_OFFLINE=1 .venv/bin/python benchmarks/export.py --n 3000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import storage as bench  # benchmarks/storage.py: FACEETL_HOME from the shared weights
from simulated import moto_server  # moto's S3 server, as million.py starts it

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEETL_SHARED", ROOT.parent / "shared"))


def _faces(n: int, parts: int, out: Path) -> str:
    """A faces dataset of ``n`` faces in ``parts`` parts, made from the real photos."""
    import dask.dataframe as dd
    import pandas as pd

    import faceetl

    photos = [*sorted((ROOT / "examples" / "images").rglob("*.jpg")),
              *sorted((SHARED / "images" / "group").glob("*.jpg"))]  # fmt: skip
    found = faceetl.compute(faceetl.extract_faces([str(p) for p in photos], backend="retinaface"))
    ok = found[found["status"] == "ok"].reset_index(drop=True)
    copies = [ok.assign(path=ok["path"] + f"#copy{i}") for i in range(-(-n // len(ok)))]
    faces = pd.concat(copies, ignore_index=True).iloc[:n]
    faces["album"] = [Path(p.split("#")[0]).parent.name for p in faces["path"]]
    url = str(out / "faces")
    faceetl.write_faces(dd.from_pandas(faces, npartitions=parts, sort=False), url, progress=False)
    print(f"{len(ok)} faces in {len(photos)} photos, repeated to {len(faces)}", flush=True)
    return url


def _samples(shards: list[Path]) -> list[list[tuple[str, bytes]]]:
    """The members of each shard (name, bytes), read back: what tarfile writes again."""
    out = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            out.append([(m.name, tar.extractfile(m).read()) for m in tar.getmembers()])
    return out


def _write_tar(f: Any, members: list[tuple[str, bytes]]) -> None:
    """``members`` as a tar stream into the file ``f``."""
    with tarfile.open(fileobj=f, mode="w|") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _size(fs: Any, root: str, suffixes: tuple[str, ...]) -> int:
    return sum(int(i["size"]) for p, i in fs.find(root, detail=True).items() if p.endswith(suffixes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="faces")
    parser.add_argument("--parts", type=int, default=30, help="parts of the faces dataset")
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faceetl-export-bench-"))
    bench._home(work / "home")
    os.environ.setdefault("FACEETL_OFFLINE", "1")
    import fsspec
    import s3fs

    import faceetl

    servers = contextlib.ExitStack()
    opts = servers.enter_context(moto_server())
    s3 = s3fs.S3FileSystem(**opts)
    s3.mkdir("bench")
    local = fsspec.filesystem("file")
    rows = []

    def timed(name: str, run: Any, fs: Any, root: str, suffixes: tuple[str, ...]) -> None:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        mb = _size(fs, root, suffixes) / 1e6
        rows.append((name, seconds, args.n / seconds, mb / seconds, mb))
        print(f"{name}: {seconds:.2f} s", flush=True)

    try:
        faces = _faces(args.n, args.parts, work)
        size = args.shard_size
        common = {"label": "album", "shard_size": size, "progress": False}
        wds_local = work / "wds"
        timed("faceetl webdataset, local", lambda: faceetl.write_webdataset(
            faces, wds_local, **common), local, str(wds_local), (".tar",))  # fmt: skip
        timed("faceetl webdataset, S3", lambda: faceetl.write_webdataset(
            faces, "s3://bench/wds", storage_options=opts, **common), s3, "bench/wds",
            (".tar",))  # fmt: skip
        shards = _samples(sorted(wds_local.glob("*.tar")))

        def tar_local() -> None:
            (work / "tar").mkdir()
            for i, members in enumerate(shards):
                with open(work / "tar" / f"faces-{i:06d}.tar", "wb") as f:
                    _write_tar(f, members)

        def tar_s3() -> None:  # one PUT per shard, built in memory
            for i, members in enumerate(shards):
                buf = io.BytesIO()
                _write_tar(buf, members)
                s3.pipe_file(f"bench/tar/faces-{i:06d}.tar", buf.getvalue())

        timed("tarfile, one process, local", tar_local, local, str(work / "tar"), (".tar",))
        timed("tarfile, one process, S3", tar_s3, s3, "bench/tar", (".tar",))
        hf = work / "hf"
        timed("faceetl huggingface, local", lambda: faceetl.write_huggingface(
            faces, hf, **common), local, str(hf), (".parquet",))  # fmt: skip
        folders = work / "folders"
        timed("faceetl imagefolder, local", lambda: faceetl.write_imagefolder(
            faces, folders, label="album", progress=False), local, str(folders),
            (".png", ".jpg", ".webp"))  # fmt: skip
    finally:
        servers.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    print(f"\n{args.n} faces, {len(shards)} shards of {size}, {os.cpu_count()} cores")
    print(f"{'writer':34} {'s':>7} {'faces/s':>9} {'MB/s':>7} {'MB':>7}")
    for name, seconds, fps, mbps, mb in rows:
        print(f"{name:34} {seconds:7.2f} {fps:9.0f} {mbps:7.1f} {mb:7.1f}")


if __name__ == "__main__":
    main()
