"""`python app.py`: the comparison app, variants of one base model side by side (Gradio).

    python app.py                                  # http://127.0.0.1:7860
    python app.py --port 8080 --runs runs --runs my-runs --results harness-results

It opens at once with nothing trained: the packaged models' zero-shot and few-shot variants need no training
(a model is downloaded the first time a variant of it answers). Finished runs under the runs folders and
harness results under the results folders appear by themselves; "Refresh" picks up new ones.

Listening beyond this machine (`--host 0.0.0.0`, any address but localhost, 127.x.x.x and ::1), the page opens only
what it lists (packaged models and corpora, the runs and results it found, the listed tasks) and files uploaded to
it; on loopback a base model, task or corpus may also be a path on this machine. A run's name always stays a folder
inside the first runs folder.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python app.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", action="append", metavar="FOLDER",
                        help="where runs are found (repeatable; the first is where the Train tab writes); default: "
                             "runs and harness-results/runs")
    parser.add_argument("--results", action="append", metavar="FOLDER",
                        help="where harness results are found (repeatable); default: harness-results")
    parser.add_argument("--votes", default="harness-results/votes.jsonl", help="the blind comparison's votes")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (0.0.0.0: every interface; then the page opens only what it "
                             "lists and uploaded files)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--language", choices=["en", "pt"], default="en",
                        help="the page's language before the browser's is known")
    args = parser.parse_args(argv)

    from harness.app.access import is_public
    from harness.app.service import Service
    from harness.app.ui import build, load_settings
    from tljax.cache import enable_compilation_cache

    enable_compilation_cache()  # a variant's first answer after a relaunch is then seconds, not tens of seconds
    settings = load_settings(args.runs or ["runs", "harness-results/runs"], args.results or ["harness-results"],
                             args.votes)
    page = build(Service(settings.runs, public=is_public(args.host)), settings, args.language)
    page.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, quiet=True)
    print(f"tljax app: {page.local_url}  (Ctrl-C to stop)", flush=True)
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
