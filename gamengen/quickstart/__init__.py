"""The quickstart (``quickstart.py``, docs/quickstart.md): the whole pipeline, each stage one of the
repository's scripts, in a resumable run folder. One concept per module:

* ``budgets``: the sizes of a run (``Budget``, the named ``BUDGETS``), the command line's overrides, the
  world model's precision, and each stage's expected time (``estimate``).
* ``stages``: the stages in order (``STAGES``), the command of each (one function per stage), what each
  writes, and the play command.
* ``state``: the run folder's record of finished stages (``quickstart.json``), its settings check, redoing.
* ``runner``: running one stage's scripts, logged, resumed after an interruption.
* ``summary``: a run's ``summary.md`` (the model's own frames first; the detail carry-over apart, when asked for).
* ``seeds``: the mean and spread of the headline numbers over several seeds.
"""
