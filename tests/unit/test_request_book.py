from dataclasses import dataclass, field

from exo_runtime.engine import GenerationRequest, SamplingParams
from exo_runtime.engines.request_book import RequestBook, end_of_turn_ids


def test_the_turn_ends_at_the_models_own_ids_and_at_every_marker_that_is_one_token():
    vocab = {"<|im_end|>": 2, "<|im_start|>": 1, "hello": 7}
    assert end_of_turn_ids([0], vocab.get) == {0, 1, 2}


def request(request_id: str) -> GenerationRequest:
    return GenerationRequest(request_id, [1, 2], SamplingParams(max_tokens=4))


@dataclass
class Seq:
    request: GenerationRequest
    index: int = 0


@dataclass
class Book(RequestBook):
    released: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def _release(self, seq: Seq) -> None:
        self.released.append(f"{seq.request.request_id}/{seq.index}")
        self._active = {k: s for k, s in self._active.items() if s is not seq}


def test_a_cancelled_request_ends_every_choice_it_runs_and_leaves_the_queue():
    book = Book()
    book._active = {("a", 0): Seq(request("a")), ("a", 1): Seq(request("a"), 1)}
    book._active[("b", 0)] = Seq(request("b"))
    book._waiting.extend([request("c"), request("d")])
    book.cancel("a")
    book.cancel("c")
    chunks = book._drop_cancelled()
    assert [(c.request_id, c.index, c.finish_reason) for c in chunks] == [
        ("a", 0, "cancelled"), ("a", 1, "cancelled"), ("c", 0, "cancelled"),
    ]  # fmt: skip
    assert book.released == ["a/0", "a/1"]
    assert [r.request_id for r in book._waiting] == ["d"]
    assert book.has_work() and book._drop_cancelled() == []
