"""bench/calls.py: what a stamp costs in calls, counted in the event loop's thread as issue 12 counted it (the README's
"What one stamp costs")."""

from __future__ import annotations

import onex.envelope
import pytest

from bench.calls import COUNTED, count


def test_a_stamp_in_process_is_validated_once_and_builds_what_the_readme_says_unvalidated() -> None:
    per_stamp = count("ceiling", 300, 100)
    assert per_stamp.keys() >= set(COUNTED)
    # The client's request is the only thing validated: nothing the runtime builds from validated models is validated
    # again (issue 12). One more validation a stamp anywhere on the way counts 2.
    assert per_stamp["validations"] == pytest.approx(1.0, abs=0.05)
    # Request, command, result, outcome; the batches' STATE_TRANSITION events add a share of one.
    assert 4.0 <= per_stamp["envelopes_built"] < 4.5
    assert 8.0 <= per_stamp["payloads_built"] < 8.5
    assert per_stamp["new_ids"] == pytest.approx(2.0, abs=0.05)
    assert per_stamp["random_ids"] == pytest.approx(1.0, abs=0.05)  # the uid the stamp writes into the file
    assert 6.0 <= per_stamp["derived_ids"] < 6.5
    assert per_stamp["python_calls"] < per_stamp["calls"]


def test_the_count_leaves_the_suites_check_of_built_envelopes_on() -> None:
    # count() runs onex as it runs outside the suite, with CHECK_BUILT off, and turns it back on after.
    assert onex.envelope.CHECK_BUILT
    count("floor", 20, 10)
    assert onex.envelope.CHECK_BUILT
