"""The human study of GameNGen section 5.1 (``run_human_study.py``, docs/human_study.md): can people tell the real
game from the world model?

* ``clips``: the clip pairs (real and generated from the same start and actions) and the study folder;
* ``answers``: the answers file (one synced JSON line per answer), sides and order per rater;
* ``report``: the rate of picking the real clip per clip length, with its 95% interval, beside the paper's;
* ``server`` (imported on its own: it needs aiohttp) and ``page.html``: the page raters answer on.
"""
