"""The chunk ledger, without a process: issue order, the window, retries after deaths, give-ups."""

import pytest

from etl.messages import Item
from etl.runners.ledger import ChunkLedger, TooManyLosses, chunks

pytestmark = pytest.mark.quick


def ledger(n_items: int = 20, size: int = 4, window: int = 3, workers: int = 2) -> ChunkLedger:
    return ChunkLedger(chunks([Item(i, f"{i}.jpg", 0) for i in range(n_items)], size), window, workers)


def issue_all(led: ChunkLedger) -> list[int]:
    issued = []
    while led.has_work():
        issued.append(led.next_task().chunk_id)
    return issued


def test_chunks_cover_the_items_in_order():
    tasks = chunks([Item(i, f"{i}.jpg", 0) for i in range(10)], 4)
    assert [len(t.items) for t in tasks] == [4, 4, 2]
    assert [it.index for t in tasks for it in t.items] == list(range(10))


def test_the_window_bounds_how_far_ahead_of_the_writer_chunks_go():
    led = ledger(window=3)
    assert issue_all(led) == [0, 1, 2]
    led.written_one()
    assert issue_all(led) == [3]
    led.written_one()
    assert issue_all(led) == [4]
    for _ in range(3):
        assert not led.done
        led.written_one()
    assert led.done and not led.has_work()


def test_a_resumed_split_starts_at_its_first_uncommitted_chunk():
    led = ledger(window=2)
    led.start_at(3)
    assert issue_all(led) == [3, 4]


def test_a_dead_workers_tasks_go_back_first_in_their_order():
    led = ledger(window=5)
    held = [led.next_task(), led.next_task()]
    led.requeue(held, item=-1, reason="was killed", blameless=False)
    assert issue_all(led) == [0, 1, 2, 3, 4]


def test_an_image_that_kills_two_workers_is_given_up_with_the_reason():
    led = ledger()
    task = led.next_task()
    for _ in range(2):
        led.count_loss(1, "was killed by SIGSEGV")
        led.requeue([task], item=1, reason="was killed by SIGSEGV", blameless=False)
        task = led.next_task()
    assert task.give_up == {1: "worker process failed twice on this image (last: it was killed by SIGSEGV)"}


def test_a_chunk_that_loses_three_workers_between_images_is_given_up_whole():
    led = ledger()
    task = led.next_task()
    for _ in range(3):
        led.requeue([task], item=-1, reason="exited with code 3", blameless=False)
        task = led.next_task()
    assert set(task.give_up) == {it.index for it in task.items}


def test_a_worker_that_never_reached_the_writer_does_not_charge_its_chunk():
    led = ledger()
    task = led.next_task()
    for _ in range(5):
        led.requeue([task], item=-1, reason="could not connect", blameless=True)
        task = led.next_task()
    assert task.give_up == {}


def test_workers_dying_idle_over_and_over_stop_the_run():
    led = ledger(workers=2)
    for _ in range(7):  # 2 x workers + 3
        led.count_loss(-1, "exited with code 3")
    with pytest.raises(TooManyLosses, match="8 in a row"):
        led.count_loss(-1, "exited with code 3")


def test_a_delivery_or_an_image_in_hand_resets_the_idle_count():
    led = ledger(workers=1)
    for _ in range(5):
        led.count_loss(-1, "x")
        led.delivered()
    led.count_loss(7, "x")
    assert led.idle_losses == 0
