"""The page's tabs, one module each: `build(...)` lays its tab out inside the open `gr.Blocks`, wires the tab's
own events, and returns what the rest of the page needs (`harness.app.ui.build` assembles them).

    side.py      side by side: up to four variants answer one message
    blind.py     blind comparison: two unnamed variants, a vote, the ratings (the logic is `harness.app.arena`)
    results.py   the harness results: table, plots, bias, disagreements
    runs.py      one finished training run
    train.py     training runs started from the page
    methods.py   what each method does and trains
    common.py    what several tabs use: settings, translated texts, defaults, trainable counts
"""
