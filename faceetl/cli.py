"""The ``faceetl`` command line: ``faceetl extract`` and ``faceetl predict``, on click as Dask's
own ``dask scheduler`` / ``dask worker`` are.

``faceetl extract SRC OUT --backend NAME`` runs :meth:`faceetl.Pife.extract`, on a local cluster
or, with ``--scheduler ADDRESS``, on a running Dask cluster; ``faceetl predict FACES OUT --model
NAME`` adds a predictor's columns to a faces dataset and writes it as parquet. Each ends with the
summary line the Python API prints; an expected error (an unknown backend or parameter, an output
made with other settings, a run already writing, a missing extra or input) is one line on stderr,
``faceetl: error: ...``, and exit status 1 (``faceetl --traceback ...`` shows the traceback).

Only click and faceetl's light modules load here: the pipeline, pandas and Dask load inside the
commands, so ``--help`` is quick.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .align import TEMPLATES
from .backends.base import REGISTRY as BACKENDS
from .predictors.base import REGISTRY as PREDICTORS

if TYPE_CHECKING:
    import pandas as pd

#: a file SRC with one of these endings is a listing of inputs, not an image
LISTINGS = (".txt", ".csv", ".parquet")


class Positive(click.ParamType):
    """An integer of at least 1 (click's IntRange would add ``x>=1`` to every default shown)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not an integer", param, ctx)
        if number < 1:
            self.fail(f"{number} is not at least 1", param, ctx)
        return number


POSITIVE = Positive()


class CommandError(click.ClickException):
    """An expected error: ``faceetl: error: <message>`` on one line of stderr, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"faceetl: error: {self.format_message()}", err=True)


def _expected() -> tuple[type[BaseException], ...]:
    """The errors said in one line: faceetl's checks (unknown names and parameters are
    ValueError / TypeError), its run errors and missing inputs."""
    from .extras import MissingExtraError
    from .pipeline.crops import OutputError
    from .pipeline.lock import ConcurrentRunError
    from .pipeline.manifest import SettingsError
    from .weights import WeightsError

    return (
        SettingsError,
        ConcurrentRunError,
        OutputError,
        MissingExtraError,
        WeightsError,
        FileNotFoundError,
        ValueError,
        TypeError,
    )


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn the expected errors raised inside into :class:`CommandError` (unless --traceback)."""
    expected = _expected()
    try:
        yield
    except expected as e:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and (ctx.find_root().obj or {}).get("traceback"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever it said
        raise CommandError(message) from e


def parse_value(text: str) -> Any:
    """A ``--param`` value: JSON where it parses (``0.6``, ``null``, ``true``, ``[1, 2]``,
    ``"a"``), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` texts as a dict (values by :func:`parse_value`; a later key wins)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE")
        out[key.strip()] = parse_value(value)
    return out


def _pairs(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> dict[str, Any]:
    """click callback: the option's ``KEY=VALUE`` texts as a dict."""
    return parse_pairs(value)


def absolute(path: str) -> str:
    """A local path made absolute (the workers run elsewhere, in other folders); URLs as they
    are."""
    from . import storage

    if storage.protocol(path) is not None:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _is_listing(src: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether ``src`` is a file listing inputs (``.txt``, ``.csv``, ``.parquet``)."""
    from . import storage

    if not src.lower().endswith(LISTINGS):
        return False
    if not storage.is_url(src):
        return os.path.isfile(storage.local_path(src))
    fs, inner = storage.filesystem(src, storage_options)
    return bool(fs.isfile(inner))


def read_listing(src: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """The inputs a listing names: a ``.txt`` file has one path a line (blank lines and lines
    starting with ``#`` skipped); a ``.csv`` or ``.parquet`` file has a ``path`` column, its
    other columns (labels, ids) carried into the output. Relative local paths are taken from
    the current folder."""
    import pandas as pd

    from . import storage

    so = storage_options if storage.is_url(src) else None
    name = src.lower()
    if name.endswith(".txt"):
        lines = storage.read_bytes(src, so).decode("utf-8").splitlines()
        frame = pd.DataFrame(
            {"path": [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]}
        )
    elif name.endswith(".csv"):
        frame = pd.read_csv(src, storage_options=so)
    else:
        frame = pd.read_parquet(src, storage_options=so)
    if "path" not in frame.columns:
        raise ValueError(f"the listing {src} has no 'path' column")
    if frame.empty:
        raise ValueError(f"the listing {src} names no inputs")
    return frame.assign(path=frame["path"].astype(str).map(absolute))


def sources(srcs: Sequence[str], storage_options: dict[str, Any] | None = None) -> Any:
    """What :meth:`faceetl.Pife.extract` takes for the SRC arguments: one folder, glob or URL
    as it is (local ones made absolute); listings, or several sources, as one frame of paths."""
    from . import storage

    for src in srcs:  # a mistyped folder is said here, not as one image's error row
        if storage.protocol(src) is None and not glob.has_magic(src):
            if not os.path.lexists(os.path.expanduser(src)):
                raise FileNotFoundError(f"no such file or folder: {src}")
    if len(srcs) == 1 and not _is_listing(srcs[0], storage_options):
        return absolute(srcs[0])
    import pandas as pd

    from .pipeline.inputs import read_images

    frames = []
    for src in srcs:
        if _is_listing(src, storage_options):
            frames.append(read_listing(src, storage_options))
        else:
            found = read_images(absolute(src), storage_options=storage_options)
            frames.append(found.compute()[["path"]])
    return pd.concat(frames, ignore_index=True)


@contextlib.contextmanager
def _cluster(
    scheduler: str | None, workers: int | None = None, backend: str | None = None
) -> Iterator[Any]:
    """A client of the cluster at ``scheduler`` (made the default, so faceetl runs there), or
    of a local cluster of ``workers`` processes for ``backend`` when ``workers`` is given, for
    the block; else nothing (the caller's own default)."""
    if scheduler:
        from distributed import Client

        try:
            client = Client(scheduler)
        except (OSError, TimeoutError) as e:
            raise CommandError(f"cannot connect to the scheduler at {scheduler}: {e}") from e
        with client:
            yield client
    elif workers:
        from .pipeline.cluster import cluster

        with cluster(backend, workers) as client:
            yield client
    else:
        yield None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="faceetl", message="%(prog)s %(version)s")
@click.option("--traceback", is_flag=True, help="Show an error's full traceback.")
@click.pass_context
def main(ctx: click.Context, traceback: bool) -> None:
    """faceetl: folders of photos to training-ready face data, on Dask.

    Each command runs on a local cluster, or with --scheduler ADDRESS on a running one
    (`dask scheduler` and `dask worker ADDRESS`, faceetl installed on the workers).
    """
    ctx.obj = {"traceback": traceback}


PARAM_HELP = (
    "Passed to the {}'s constructor; repeat for more. VALUE is JSON where it parses "
    "(0.6, null, true), else text."
)
STORAGE_HELP = "fsspec storage option for URLs (anon=true); repeat for more. VALUE as for --param."
STORAGE_OPTION = click.option(
    "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", callback=_pairs,
    help=STORAGE_HELP,
)  # fmt: skip
SCHEDULER_OPTION = click.option(
    "--scheduler", metavar="ADDRESS",
    help="Run on the Dask cluster of this scheduler (tcp://host:8786).",
)  # fmt: skip


def param_option(what: str) -> Callable[[Any], Any]:
    """``--param KEY=VALUE`` (repeated) for ``what``'s constructor."""
    return click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                        callback=_pairs, help=PARAM_HELP.format(what))  # fmt: skip


def _one_cluster(scheduler: str | None, workers: int | None) -> None:
    if scheduler and workers:
        raise click.UsageError(
            "--workers starts a local cluster; with --scheduler the cluster's own workers run"
        )


@main.command()
@click.argument("src", nargs=-1, required=True)
@click.argument("out")
@click.option(
    "--backend",
    default="retinaface",
    show_default=True,
    metavar="NAME",
    help=f"The detector: {', '.join(BACKENDS.builtin)}, or a registered one.",
)
@click.option(
    "--workers",
    type=POSITIVE,
    default=None,
    show_default="the backend's entry in the worker map",
    help="Worker processes of the local cluster (not with --scheduler).",
)
@SCHEDULER_OPTION
@click.option(
    "--size",
    type=POSITIVE,
    default=112,
    show_default=True,
    help="Crop size in pixels.",
)
@click.option(
    "--template",
    type=click.Choice(TEMPLATES),
    default="arcface",
    show_default=True,
    help="Alignment template.",
)
@click.option(
    "--padding", type=float, default=0.25, show_default=True, help="Padding of the dlib template."
)
@click.option(
    "--crop-format", default="png", show_default=True, help="png, jpeg[:QUALITY] or webp[:QUALITY]."
)
@click.option(
    "--partition-size",
    type=POSITIVE,
    default=None,
    show_default="about 16 partitions per worker thread, at most 64 images",
    help="Images per partition.",
)
@click.option(
    "--batch-size",
    type=POSITIVE,
    default=16,
    show_default=True,
    help="Images per detector batch.",
)
@param_option("backend")
@STORAGE_OPTION
@click.option(
    "--force",
    is_flag=True,
    help="Write without the run lock, on a store that cannot create a file only if "
    "absent: says that no other run writes to OUT.",
)
def extract(
    src: tuple[str, ...],
    out: str,
    backend: str,
    workers: int | None,
    scheduler: str | None,
    size: int,
    template: str,
    padding: float,
    crop_format: str,
    partition_size: int | None,
    batch_size: int,
    params: dict[str, Any],
    storage_options: dict[str, Any],
    force: bool,
) -> None:
    """Detect and align the faces of SRC; write crops and OUT/faces.parquet/.

    SRC: a folder, a glob ('photos/**/*.jpg', quoted), a URL (s3://bucket/photos/), or a
    listing (.txt: a path a line; .csv or .parquet: a 'path' column, other columns carried);
    several SRC are joined. OUT: a folder or URL. A run again skips the images already done.
    """
    _one_cluster(scheduler, workers)
    with _errors():
        from .align import AlignSpec
        from .pife import Pife

        pife = Pife(
            backend,
            workers,
            size=size,
            template=template,
            padding=padding,
            batch_size=batch_size,
            partition_size=partition_size,
            crop_format=crop_format,
            **params,
        )  # checks names: no cluster yet
        AlignSpec(template, size, padding)  # and the crop geometry (a size arcface cannot make)
        so = storage_options or None
        paths = sources(src, so)  # a missing input is said before any cluster starts
        with _cluster(scheduler), pife:
            pife.extract(paths, absolute(out), storage_options=so, force=force)


@main.command()
@click.argument("faces")
@click.argument("out")
@click.option(
    "--model",
    required=True,
    metavar="NAME",
    help=f"The predictor: {', '.join(PREDICTORS.builtin)}, or a registered one.",
)
@param_option("model")
@SCHEDULER_OPTION
@click.option(
    "--workers",
    type=POSITIVE,
    default=None,
    show_default="none: Dask's threads in this process",
    help="Start a local cluster of this many worker processes.",
)
@click.option(
    "--batch-size",
    type=POSITIVE,
    default=32,
    show_default=True,
    help="Crops per model batch.",
)
@STORAGE_OPTION
def predict(
    faces: str,
    out: str,
    model: str,
    params: dict[str, Any],
    scheduler: str | None,
    workers: int | None,
    batch_size: int,
    storage_options: dict[str, Any],
) -> None:
    """Add a model's columns to the faces dataset FACES; write the result to OUT as parquet.

    FACES: a faces dataset (an extract's OUT/faces.parquet, or OUT itself) or parquet file.
    OUT: a new folder or URL (a dataset of parquet parts; faceetl.read_faces reads it).
    """
    _one_cluster(scheduler, workers)
    with _errors():
        from .predictors.base import REGISTRY

        REGISTRY.check(model, params)  # an unknown model or parameter fails here: no cluster yet
        so = storage_options or None
        faces, out = faces_dataset(absolute(faces), so), absolute(out)
        check_output(out, faces, so)
        with _cluster(scheduler, workers):
            from .pipeline.predict import predict as add_columns
            from .pipeline.write import write_faces
            from .schema import read_faces

            frame = read_faces(faces, storage_options=so, lazy=True)
            frame = add_columns(frame, model, batch_size=batch_size, storage_options=so, **params)
            check_output(out, faces, so)  # again: another run may have written since
            write_faces(frame, out, so)  # computed once; its summary line ends the run


def faces_dataset(path: str, storage_options: dict[str, Any] | None = None) -> str:
    """``path``'s ``faces.parquet`` dataset when ``path`` is an extract's output folder, else
    ``path`` (a missing one is FileNotFoundError)."""
    from . import schema, storage

    fs, inner = storage.filesystem(path, storage_options)
    if not fs.exists(inner):
        raise FileNotFoundError(f"no faces dataset at {path}")
    return schema.faces_dataset(path, storage_options)


def check_output(out: str, faces: str, storage_options: dict[str, Any] | None = None) -> None:
    """OutputError unless ``out`` can be written, holds no parquet file yet and does not
    overlap the faces dataset it is made from."""
    from . import storage
    from .pipeline.crops import OutputError, check_writable
    from .pipeline.manifest import list_names

    if storage.under(out, faces) or storage.under(faces, out):
        raise OutputError(
            f"the output {out} and the faces {faces} overlap: write the "
            "predictions to a folder of their own"
        )
    check_writable(out, storage_options)
    held = [n for n in list_names(out, storage_options) if n.endswith(".parquet")]
    if held:
        raise OutputError(
            f"the output {out} holds {len(held)} parquet files already: remove "
            "them or write to another folder"
        )
