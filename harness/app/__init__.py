"""The comparison app (`python app.py`): a Gradio page over what the harness and training runs write.

It holds no model logic: answers come from `harness.variants.evaluate` (the harness's own records, one item
at a time), replies from `tljax.models.stream_chat`, training from `python -m tljax.train` processes.

    catalogue.py  finished runs and harness results found on disk (re-read on every refresh)
    service.py    the variants of a base model, answering one text; models shared by every user
    arena.py      blind votes (JSON lines) and Bradley-Terry ratings with bootstrap intervals
    trainer.py    training runs started from the page (a `python -m tljax.train` process each)
    texts.py      every label and help text, in English and Portuguese
    ui.py         the page itself: the header, the tabs in order, what spans them
    tabs/         one module per tab (side, blind, results, runs, train, methods) and what they share
"""
