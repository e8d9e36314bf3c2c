"""`kresize`: submit images to a kresize API, follow them live, list, inspect, download and cancel jobs.

This module is the command line only (arguments, display); kresize_cli.client talks HTTP and
kresize_cli.jobs holds the decisions (exit codes, event state, download paths).

Exit codes, for scripts:
  0  everything succeeded (for a job still running: nothing has failed so far)
  1  an error talking to the API: unreachable, 4xx/5xx, a bad or missing token; also a submit where no file
     at all was accepted (the API creates no job then), and a download that could not be written
  2  usage error (bad options or arguments)
  3  the job finished but some files failed (PartiallyFailed), or some file was rejected at upload
  4  the job failed entirely (phase Failed)
`submit` (without --wait: only rejections count), `submit --wait`, `status` and `download` report the job's
outcome this way; `ls` and `cancel` exit 0 or 1.

Global options go before the command (`kresize --api-url URL ls`); `--json` may also follow it. With --json,
stdout is one JSON document: submit: the API's answer (plus "job" and "results", every file, with --wait);
status: the job; ls: {"items": [...]}; download: {"written": [...], "errors": [...]}; cancel: the API's answer;
any error: {"error": {"status", "message", "details", "files"}} (status 0: the API was not reached).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urljoin, urlsplit

import httpx
import typer
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from .client import ApiError, FileState, JobDetail, JobSummary, KresizeClient, Output, UploadedFile
from .jobs import (
    EXIT_API_ERROR,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    DownloadPlanner,
    JobTracker,
    UnsafePath,
    exit_code_for,
    printable,
)

DEFAULT_API_URL = "http://localhost:30080"
# A folder given to `submit` adds the files directly in it with one of these extensions (not its subfolders).
# The API judges every file by its content; this only keeps stray files of a folder out.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".avif", ".gif", ".tif", ".tiff", ".bmp"})
POLL_SECONDS = 1.0
POLL_RETRIES = 30  # consecutive unreachable/5xx polls (about 30 s) before `--wait` gives up
STREAM_RESUMES = 1  # reconnections of a broken event stream before polling instead

EXIT_CODES_HELP = f"""Exit codes:

{EXIT_OK}: everything succeeded.

{EXIT_API_ERROR}: an error talking to the API (unreachable, 4xx/5xx, bad token), no file accepted, a\
 download not written.

{EXIT_USAGE}: usage error.

{EXIT_PARTIAL}: the job finished but some files failed, or a file was rejected at upload.

{EXIT_FAILED}: the job failed entirely (phase Failed)."""

app = typer.Typer(
    name="kresize", no_args_is_help=True, add_completion=False, epilog=EXIT_CODES_HELP,
    help="Resize images on Kubernetes through the kresize API: submit, follow, list, download, cancel.")

JsonFlag = Annotated[bool, typer.Option("--json", help="JSON on stdout instead of tables; no progress display.")]


@dataclass
class Cli:
    """What every command needs: where the API is, how to display."""

    api_url: str
    token: str | None
    json: bool
    out: Console
    err: Console

    def client(self) -> KresizeClient:
        return KresizeClient(self.api_url, self.token)

    def emit(self, value: Any) -> None:
        """Machine-readable output: one JSON document on stdout (ASCII, whatever the locale)."""
        sys.stdout.write(json.dumps(value, indent=2) + "\n")
        sys.stdout.flush()

    def warn(self, message: str) -> None:
        self.err.print(Text(f"warning: {message}", style="yellow"))


@app.callback()
def global_options(
    ctx: typer.Context,
    api_url: Annotated[str, typer.Option("--api-url", envvar="KRESIZE_API_URL", help="The API's base URL.")
                       ] = DEFAULT_API_URL,
    token: Annotated[str | None, typer.Option("--token", envvar="KRESIZE_TOKEN", show_default=False,
                                              help="API token (its tenant owns the jobs).")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Resize images on Kubernetes through the kresize API: submit, follow, list, download, cancel."""
    ctx.obj = Cli(api_url, token or None, json_output, Console(), Console(stderr=True))


def _cli(ctx: typer.Context, json_output: bool) -> Cli:
    cli = ctx.obj  # made by global_options, which runs before any command
    assert isinstance(cli, Cli)
    cli.json = cli.json or json_output
    return cli


@contextmanager
def _api(cli: Cli) -> Iterator[KresizeClient]:
    """A client for one command; any ApiError ends the command with exit code 1 and a readable message."""
    try:
        with cli.client() as client:
            yield client
    except ApiError as error:
        _report(cli, error)
        raise typer.Exit(EXIT_API_ERROR) from None
    except KeyboardInterrupt:
        cli.err.print("interrupted (the job, if any, keeps running on the server)")
        raise typer.Exit(130) from None


def _report(cli: Cli, error: ApiError) -> None:
    if cli.json:
        cli.emit(error.to_json())
    if error.status == 401:
        headline = f"authentication failed (401): {error.message}. Check --token or KRESIZE_TOKEN."
    elif error.status == 403:
        headline = f"not allowed (403): {error.message}"
    elif error.status:
        headline = f"the API answered {error.status}: {error.message}"
    else:
        headline = error.message
    cli.err.print(Text(f"error: {printable(headline)}", style="bold red"))
    for detail in error.details:
        cli.err.print(Text(f"  - {printable(detail)}"))
    if error.files:
        _print_rejections(cli.err, error.files)


def _usage(ctx: typer.Context, message: str) -> NoReturn:
    ctx.fail(message)  # a usage error: typer prints it with the usage line and exits 2


def _finish(code: int) -> NoReturn:
    raise typer.Exit(code)


# --- submit --------------------------------------------------------------------------------------------------


def expand_paths(paths: Sequence[Path], warn: Callable[[str], None]) -> list[Path]:
    """Files as given (the API judges them), folders as the image files directly in them, sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                warn(f"{path}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        else:
            files.append(path)
    return files


def _read_targets(ctx: typer.Context, path: Path) -> list[dict[str, Any]]:
    try:
        targets = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        _usage(ctx, f"--targets {path}: not readable JSON: {error}")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, dict) for t in targets):
        _usage(ctx, f"--targets {path}: expected a JSON list of target objects, "
               'like [{"name": "thumb", "width": 320, "height": 320, "fit": "cover", "format": "webp"}]')
    return targets


@app.command()
def submit(
    ctx: typer.Context,
    paths: Annotated[list[Path] | None, typer.Argument(
        exists=True, readable=True, show_default=False,
        help="Image files, or folders (their image files, not subfolders).")] = None,
    width: Annotated[int | None, typer.Option(min=1, help="Target width in pixels.")] = None,
    height: Annotated[int | None, typer.Option(min=1, help="Target height in pixels.")] = None,
    fit: Annotated[str | None, typer.Option(help="cover (default), contain, fill or inside.")] = None,
    image_format: Annotated[str | None, typer.Option(
        "--format", help="jpeg, png, webp, avif or original (the default: as the source).")] = None,
    quality: Annotated[int | None, typer.Option(min=1, max=100, help="Encoder quality.")] = None,
    targets: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, readable=True,
        help="A JSON file with a list of targets, instead of --width/--height/--fit/--format/--quality.")] = None,
    url: Annotated[list[str] | None, typer.Option(
        "--url", help="An image URL for the API to fetch (repeat the option for more).")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Follow the job live until it ends, then show every file.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Upload images and create a job; prints its name and the files refused at upload."""
    cli = _cli(ctx, json_output)
    single = {"width": width, "height": height, "fit": fit, "format": image_format, "quality": quality}
    target_list: list[dict[str, Any]] | None = None
    if targets is not None:
        if any(v is not None for v in single.values()):
            _usage(ctx, "give either --targets or --width/--height/--fit/--format/--quality, not both")
        target_list = _read_targets(ctx, targets)
    elif width is None and height is None:
        _usage(ctx, "give --width and/or --height (or --targets FILE)")
    files = expand_paths(paths or [], cli.warn)
    urls = url or []
    if not files and not urls:
        _usage(ctx, "nothing to submit: give image files, folders with images, or --url")

    with _api(cli) as client:
        try:
            submitted = client.submit(files, urls=urls, targets=target_list,
                                      target=None if target_list is not None else single)
        except ApiError as error:
            if error.files and not cli.json:
                cli.err.print(f"no file was accepted: {len(error.files)} rejected")
            raise
        name = submitted["name"]
        rejected = [f for f in submitted["files"] if not f["accepted"]]
        if not cli.json:
            accepted = len(submitted["files"]) - len(rejected)
            cli.out.print(Text.assemble("job ", (printable(name), "bold"),
                                        f": {accepted} file(s) accepted, {len(rejected)} rejected"))
            if rejected:
                _print_rejections(cli.out, rejected)
        if not wait:
            if cli.json:
                cli.emit(submitted)
            _finish(exit_code_for(None, len(rejected)))

        tracker = _follow_with_display(cli, client, name)
        detail = client.job(name)
        results = list(client.files(name))
        if cli.json:
            cli.emit({**submitted, "job": detail, "results": results})
        else:
            cli.out.print(Text("results:", style="bold"), _results_table(results))
            cli.out.print(_summary_line(detail, tracker))
    _finish(exit_code_for(detail, len(rejected)))


def follow(client: KresizeClient, name: str, on_change: Callable[[JobTracker, FileState | None], None],
           warn: Callable[[str], None]) -> JobTracker:
    """Follow a job until its phase is terminal over its event stream. A stream that breaks is resumed once
    from the last event (`Last-Event-ID`); after that, or with no stream at all, GET the job every second:
    that costs only the live list of failed files."""
    tracker = JobTracker(name)
    for attempt in range(1 + STREAM_RESUMES):
        try:
            with closing(client.events(name, last_event_id=tracker.last_event_id)) as events:
                for event in events:
                    new_file = tracker.apply(event)
                    on_change(tracker, new_file)
                    if tracker.finished:
                        return tracker  # closing() ends the stream now, not when collected
            reason = "the event stream ended before the job did"
        except ApiError as error:
            if error.status in (401, 403):
                raise
            reason = f"the event stream failed ({printable(error, 200)})"
            if 400 <= error.status < 500:  # no such stream here (an older API): resuming will not help
                break
        if attempt < STREAM_RESUMES:
            warn(f"{reason}; resuming it")
    warn(f"{reason}; polling the job every second")
    failures = 0
    while True:
        try:
            summary: JobSummary = client.job(name)
        except ApiError as error:
            failures += 1
            if (error.status and error.status < 500) or failures > POLL_RETRIES:
                raise
        else:
            failures = 0
            tracker.update(summary)
            on_change(tracker, None)
            if tracker.finished:
                return tracker
        time.sleep(POLL_SECONDS)


class _RateColumn(ProgressColumn):
    """Images per second: the server's figure when it gives one, else measured here."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate")
        return Text("" if rate is None else f"{rate:.1f} img/s", style="cyan")


def _follow_with_display(cli: Cli, client: KresizeClient, name: str) -> JobTracker:
    if cli.json:
        return follow(client, name, lambda tracker, file: None, lambda message: None)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
        _RateColumn(), TimeElapsedColumn(), console=cli.err)
    task: TaskID = progress.add_task(escape(printable(name)), total=None, ok=0, failed=0, rate=None)

    def on_change(tracker: JobTracker, file: FileState | None) -> None:
        if tracker.summary is not None:
            counts = tracker.summary["progress"]
            progress.update(task, total=counts["total"] or None, completed=counts["done"],
                            ok=counts["succeeded"], failed=counts["failed"], rate=tracker.images_per_second,
                            description=escape(f"{printable(name)} {printable(tracker.summary['phase'])}"))
        if file is not None and file["state"] == "failed":
            progress.console.print(Text(f"failed: {_file_label(file)}: {printable(file['error'] or '')}",
                                        style="red"))

    with progress:
        return follow(client, name, on_change, lambda message: progress.console.print(
            Text(f"warning: {message}", style="yellow")))


def _file_label(file: FileState) -> str:
    return printable(file.get("filename") or file.get("source") or f"#{file['index']}", 120)


def _print_rejections(console: Console, files: Sequence[UploadedFile]) -> None:
    table = Table("file", "rejected because")
    for f in files:
        if not f["accepted"]:
            table.add_row(Text(printable(f["filename"], 120)), Text(printable(f["error"] or ""), style="red"))
    console.print(Text("rejected at upload:", style="bold"), table)


def _outputs_text(outputs: Sequence[Output]) -> Text:
    return Text("\n".join(f"{printable(o['target'], 60)} {o['width']}x{o['height']} {printable(o['format'], 10)} "
                          f"{decimal(o['bytes'])}" for o in outputs))


def _results_table(files: Sequence[FileState]) -> Table:
    table = Table("file", "state", "outputs", "error")
    styles = {"succeeded": "green", "failed": "red"}
    for f in files:
        table.add_row(Text(_file_label(f)), Text(f["state"], style=styles.get(f["state"], "")),
                      _outputs_text(f["outputs"]), Text(printable(f["error"] or ""), style="red"))
    return table


def _summary_line(job: JobSummary, tracker: JobTracker | None = None) -> Text:
    counts = job["progress"]
    styles = {"Succeeded": "bold green", "PartiallyFailed": "bold yellow", "Failed": "bold red"}
    line = Text.assemble((printable(job["name"]), "bold"), " ", (job["phase"], styles.get(job["phase"], "bold")),
                         f": {counts['succeeded']} succeeded, {counts['failed']} failed of {counts['total']}")
    rate = job.get("imagesPerSecond") or (tracker.images_per_second if tracker else None)
    if rate:
        line.append(f", {rate:.1f} images/s")
    return line


# --- read, download, cancel ----------------------------------------------------------------------------------


@app.command()
def status(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The job's name.")],
           json_output: JsonFlag = False) -> None:
    """Show a job's summary and its first failures; exits with the job's code (3 or 4 when it failed)."""
    cli = _cli(ctx, json_output)
    with _api(cli) as client:
        job = client.job(name)
    if cli.json:
        cli.emit(job)
    else:
        _print_status(cli, job)
    _finish(exit_code_for(job))


def _print_status(cli: Cli, job: JobDetail) -> None:
    counts = job["progress"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, Any]] = [
        ("job", job["name"]), ("phase", job["phase"]),
        ("progress", f"{counts['done']}/{counts['total']} done: {counts['succeeded']} succeeded, "
                     f"{counts['failed']} failed, {counts.get('reused', 0)} reused"),
        ("images/s", job.get("imagesPerSecond")), ("estimated end", job.get("estimatedCompletionTime")),
        ("queue position", job.get("queuePosition")), ("targets", ", ".join(job.get("targets") or []) or None),
        ("created", job.get("createdAt")), ("completed", job.get("completionTime")),
    ]
    for key, value in rows:
        if value is not None:
            grid.add_row(key, Text(printable(f"{value:.2f}" if isinstance(value, float) else value)))
    cli.out.print(grid)
    failures = job.get("failures") or []
    if failures:
        table = Table("source", "reason")
        for failure in failures:
            table.add_row(Text(printable(failure["source"], 200)), Text(printable(failure["reason"]), style="red"))
        cli.out.print(Text("failures (the first ones):", style="bold"), table)


@app.command("ls")
def list_jobs(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """List your jobs, newest first."""
    cli = _cli(ctx, json_output)
    with _api(cli) as client:
        jobs = client.jobs()
    if cli.json:
        cli.emit({"items": jobs})
        return
    table = Table("name", "phase", "done", "ok", "failed", "img/s", "targets", "created")
    for job in jobs:
        counts, rate = job["progress"], job.get("imagesPerSecond")
        table.add_row(Text(printable(job["name"])), Text(printable(job["phase"])),
                      f"{counts['done']}/{counts['total']}", str(counts["succeeded"]), str(counts["failed"]),
                      "" if rate is None else f"{rate:.1f}", Text(printable(", ".join(job.get("targets") or []))),
                      Text(printable(job.get("createdAt") or "")))
    cli.out.print(table if jobs else "no jobs")


class DownloadError(Exception):
    """One output that could not be fetched or written."""


def fetch(http: httpx.Client, url: str, path: Path, expected_bytes: int | None = None) -> int:
    """Stream one URL to `path` through a temporary file beside it, so a failed download leaves nothing
    half-written under that name. Returns the bytes written."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"not an http(s) URL: {printable(url, 100)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with http.stream("GET", url) as response:
        if not response.is_success:
            raise DownloadError(f"HTTP {response.status_code} from the download URL")
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".kresize-", suffix=".part")
        try:
            size = 0
            with os.fdopen(handle, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    size += len(chunk)
            if expected_bytes is not None and size != expected_bytes:
                raise DownloadError(f"got {size} bytes, the API announced {expected_bytes}")
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return size


@app.command()
def download(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The job's name.")],
    directory: Annotated[Path, typer.Argument(file_okay=False, help="Where to write DIR/<image>/<target>.<ext>.")],
    json_output: JsonFlag = False,
) -> None:
    """Download every output of every succeeded file; exits with the job's code once all are written."""
    cli = _cli(ctx, json_output)
    written: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    with _api(cli) as client:
        job = client.job(name)
        if job["phase"] not in ("Succeeded", "PartiallyFailed", "Failed"):
            cli.warn(f"job {printable(name)} is {printable(job['phase'])}: downloading the files finished so far")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            cli.err.print(Text(f"error: cannot create {directory}: {error}", style="bold red"))
            _finish(EXIT_API_ERROR)
        planner = DownloadPlanner(directory)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=cli.err, disable=cli.json)
        # Presigned URLs carry their own authorization: the API token is never sent to the storage.
        with progress, httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0)) as http:
            task = progress.add_task(f"downloading {escape(printable(name))}", total=job["progress"]["succeeded"])
            for file in client.files(name, state="succeeded"):
                if file["state"] != "succeeded":
                    continue
                for output in file["outputs"]:
                    entry = {"file": file.get("filename") or file.get("source"), "target": output["target"]}
                    try:
                        path = planner.path_for(file, output)
                        size = fetch(http, urljoin(client.base_url + "/", output["url"]), path, output.get("bytes"))
                    except (UnsafePath, DownloadError, httpx.HTTPError, OSError) as error:
                        errors.append({**entry, "error": str(error)})
                        progress.console.print(Text(f"failed: {printable(entry['file'] or '')} "
                                                    f"{printable(output['target'])}: {printable(error)}",
                                                    style="red"))
                        continue
                    written.append({**entry, "path": str(path), "bytes": size})
                progress.advance(task)
            progress.update(task, total=progress.tasks[0].completed)  # the files there were, whatever announced
    if cli.json:
        cli.emit({"name": name, "phase": job["phase"], "directory": str(directory), "written": written,
                  "errors": errors})
    else:
        cli.out.print(f"{len(written)} file(s) written under {escape(str(directory))}"
                      + (f", {len(errors)} failed" if errors else ""))
    _finish(EXIT_API_ERROR if errors else exit_code_for(job))


@app.command()
def cancel(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The job's name.")],
           json_output: JsonFlag = False) -> None:
    """Cancel a job: the API stops its pods and removes the job."""
    cli = _cli(ctx, json_output)
    with _api(cli) as client:
        answer = client.delete(name)
    if cli.json:
        cli.emit(answer)
    else:
        cli.out.print(Text.assemble("job ", (printable(name), "bold"), f": {printable(answer.get('status', ''))}"))


def main() -> None:
    """The console script."""
    app()

