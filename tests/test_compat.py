"""The nerfstudio/viser/torch internals of itergen_ns.compat still hold in the installed packages."""

from itergen_ns import compat


def test_every_internal_the_project_relies_on_still_holds() -> None:
    assert compat.problems() == []


def test_event_writers_is_the_trainers_list() -> None:
    from nerfstudio.utils import writer

    assert compat.event_writers() is writer.EVENT_WRITERS
