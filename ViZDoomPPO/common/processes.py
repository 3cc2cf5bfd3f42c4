"""Process hygiene: ViZDoom runs the engine as a child process named "vizdoom"; make sure none outlives us even
when ``close()`` is skipped by a crash, and that the games of a run can be found and killed after their parent died.
"""

from __future__ import annotations

import os


def vizdoom_children() -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(os.getpid()).children(recursive=True) if p.name() == "vizdoom"]
    except Exception:  # psutil missing or the process vanished: nothing to track
        return []


def kill_pids(pids: list[int]) -> None:
    """Kill the listed processes that are still ViZDoom games (a reused pid is left alone)."""
    if not pids:
        return
    import psutil

    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.name() == "vizdoom":
                process.kill()
        except psutil.Error:
            pass


RUN_TAG_VARIABLE = "GAMENGEN_RUN_ID"


def tag_games_with_run(run_id: str) -> None:
    """Mark every game started from now on by this process and its children (they inherit the
    environment), so ``kill_games_of_run`` finds them even after their parent died."""
    os.environ[RUN_TAG_VARIABLE] = run_id


def kill_games_of_run(run_id: str) -> int:
    """Kill every ``vizdoom`` process tagged with ``run_id``, wherever it was reparented. Returns how many."""
    import psutil

    killed = 0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "vizdoom":
            continue
        try:
            if process.environ().get(RUN_TAG_VARIABLE) == run_id:
                process.kill()
                killed += 1
        except psutil.Error:
            pass
    return killed


def kill_vizdoom_descendants(pid: int | None = None) -> int:
    """Kill every ``vizdoom`` process below ``pid`` (default: this process). Returns how many."""
    import psutil

    try:
        children = psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.Error:
        return 0
    victims = [p for p in children if _safe_name(p) == "vizdoom"]
    for process in victims:
        try:
            process.kill()
        except psutil.Error:
            pass
    return len(victims)


def _safe_name(process) -> str:
    try:
        return process.name()
    except Exception:
        return ""
