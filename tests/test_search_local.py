"""The embedded index: BM25 text search (scores checked by hand), perceptual-hash image search, build/load,
corpus formats and errors, the build CLI."""

import base64
import io
import json
import math

import numpy as np
import pytest
from _search_tools_helpers import TEXTS, emblem, image_rows
from PIL import Image

from openrlhf_tapo.cli import build_index
from openrlhf_tapo.search.images import hamming_distances, perceptual_hashes
from openrlhf_tapo.search.local_index import CorpusError, LocalIndex, LocalIndexBackend, read_jsonl


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return LocalIndex.build(TEXTS, image_rows(), tmp_path_factory.mktemp("idx") / "index")


def test_bm25_scores_match_hand_computation(tmp_path):
    docs = [{"text": "alpha beta"}, {"text": "alpha gamma gamma"}, {"text": "delta"}]
    idx = LocalIndex.build(docs, [], tmp_path / "i")
    hits = idx.search_text("gamma", 5)
    # Lucene BM25 (k1=1.5, b=0.75, no (k1 + 1) factor): idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    # tf part = tf / (tf + k1 * (1 - b + b * |d| / avg|d|)); doc 1 has tf=2, |d|=3, avg |d|=2.
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    expected = idf * 2 / (2 + 1.5 * (1 - 0.75 + 0.75 * 3 / 2))
    assert [h.id for h in hits] == ["1"]
    assert hits[0].score == pytest.approx(expected, rel=1e-5)
    # "alpha" is in docs 0 and 1: the shorter doc 0 ranks first; doc 2 matches nothing and is left out.
    assert [h.id for h in idx.search_text("alpha", 5)] == ["0", "1"]


def test_text_search_ranks_relevant_passage_first(index):
    hits = index.search_text("Which tower stands in Paris?", 3)
    assert hits[0].id == "eiffel" and hits[0].title == "Eiffel Tower" and hits[0].url == "u/1"
    assert {h.id for h in hits} >= {"eiffel", "louvre"}  # both mention Paris
    assert hits == sorted(hits, key=lambda h: -h.score)
    assert index.search_text("the of and", 3) == []  # stop words only
    assert index.search_text("zyxwv", 3) == []


def test_image_search_finds_rescaled_and_recompressed_original(index):
    rows = image_rows()
    for i in (0, 5, 11):
        buf = io.BytesIO()
        rows[i]["image"].resize((150, 150)).save(buf, format="JPEG", quality=60)
        query = Image.open(buf)
        hits = index.search_image(query, 3)
        assert hits[0].id == f"img{i}" and hits[0].title == f"Emblem {i}"
        assert hits[0].score > hits[1].score
    exact = index.search_image(rows[3]["image"], 1)[0]
    assert exact.id == "img3" and exact.score == 1.0
    assert exact.image.size == (96, 96)  # thumbnail kept at its size (under 256)


def test_perceptual_hash_properties():
    a, b = emblem(1), emblem(2)
    ha = perceptual_hashes(a)
    assert perceptual_hashes(a.copy()) == ha
    hashes = np.array([ha, perceptual_hashes(b)], dtype=np.uint64)
    d = hamming_distances(hashes, ha)
    assert d[0] == 0 and d[1] > 10
    # Hamming distance is a popcount of the XOR: flipping 3 bits of the pHash gives distance 3.
    flipped = (ha[0] ^ 0b10101, ha[1])
    assert hamming_distances(np.array([flipped], dtype=np.uint64), ha)[0] == 3


def test_load_round_trip_and_backend(index):
    loaded = LocalIndex.load(index.directory)
    assert loaded.num_passages == len(TEXTS) and loaded.num_images == 12
    assert loaded.search_text("amphitheatre Rome", 2) == index.search_text("amphitheatre Rome", 2)


async def test_async_backend_accepts_bytes_and_pil(index):
    backend = LocalIndexBackend(index)
    buf = io.BytesIO()
    emblem(4).save(buf, format="PNG")
    by_bytes = await backend.image_search(buf.getvalue(), 2)
    by_pil = await backend.image_search(emblem(4), 2)
    assert [h.id for h in by_bytes] == [h.id for h in by_pil] and by_bytes[0].id == "img4"
    assert (await backend.text_search("London bell", 1))[0].id == "bigben"


def test_jsonl_corpus_paths_and_base64(tmp_path):
    (tmp_path / "pics").mkdir()
    emblem(7).save(tmp_path / "pics" / "a.png")
    buf = io.BytesIO()
    emblem(8).save(buf, format="PNG")
    rows = [
        {"id": "a", "title": "A", "url": "ua", "image": "pics/a.png"},
        {"id": "b", "title": "B", "url": "ub", "image": base64.b64encode(buf.getvalue()).decode()},
    ]
    (tmp_path / "images.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n\n")
    idx = LocalIndex.build(
        read_jsonl(tmp_path / "text.jsonl"), read_jsonl(tmp_path / "images.jsonl", images=True), tmp_path / "out"
    )
    assert idx.search_image(emblem(7), 1)[0].id == "a"
    assert idx.search_image(emblem(8), 1)[0].id == "b"
    assert idx.search_text("hello", 1)[0].id == "0"  # missing id -> row index


@pytest.mark.parametrize(
    "texts, images, message",
    [
        ([{"title": "no text"}], [], "text corpus row 0: missing 'text'"),
        ([{"text": "ok"}, {"text": "   "}], [], "text corpus row 1: 'text' is empty"),
        ([{"text": "ok", "title": 3.5}], [], "text corpus row 0: 'title' must be a string"),
        ([], [{"id": "x"}], "image corpus row 0: expected an object with an 'image' field"),
        ([], [{"image": b"not an image"}], "image corpus row 0: cannot decode image"),
        ([], [{"image": "/nonexistent/x.png"}], "image corpus row 0: cannot read image file"),
    ],
)
def test_corpus_errors_name_the_row_and_leave_nothing(tmp_path, texts, images, message):
    with pytest.raises(CorpusError, match=message.replace("(", r"\(")):
        LocalIndex.build(texts, images, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # the temporary build directory is gone too


def test_refuses_to_overwrite_and_bad_jsonl(tmp_path):
    assert LocalIndex.build([{"text": "the"}], [], tmp_path / "i").search_text("the", 1) == []  # stop words only
    with pytest.raises(FileExistsError, match="overwrite"):
        LocalIndex.build([{"text": "y"}], [], tmp_path / "i")
    assert LocalIndex.build([{"text": "yy"}], [], tmp_path / "i", overwrite=True).search_text("yy", 1)
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(CorpusError, match="line 2 is not valid JSON"):
        list(read_jsonl(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError, match="build_index"):
        LocalIndex.load(tmp_path)


def test_build_index_cli(tmp_path, capsys):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEXTS))
    assert build_index.main(["--text", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "idx")]) == 0
    assert "4 passages, 0 images" in capsys.readouterr().out
    assert LocalIndex.load(tmp_path / "idx").search_text("Mona Lisa", 1)[0].id == "louvre"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"title": "x"}) + "\n")
    assert build_index.main(["--text", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "idx2")]) == 2
    assert "row 0: missing 'text'" in capsys.readouterr().err


def test_parquet_corpora(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from openrlhf_tapo.search.local_index import read_corpus

    pq.write_table(pa.Table.from_pylist(TEXTS), tmp_path / "text.parquet")
    (tmp_path / "pics").mkdir()
    emblem(9).save(tmp_path / "pics" / "nine.png")
    buf = io.BytesIO()
    emblem(10).save(buf, format="PNG")
    rows = [
        {"id": "raw", "title": "Raw bytes", "url": "u1", "image": {"bytes": buf.getvalue(), "path": None}},
        {"id": "rel", "title": "Relative path", "url": "u2", "image": {"bytes": None, "path": "pics/nine.png"}},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "images.parquet")
    idx = LocalIndex.build(
        read_corpus(tmp_path / "text.parquet"), read_corpus(tmp_path / "images.parquet", images=True), tmp_path / "i"
    )
    assert idx.search_text("Mona Lisa", 1)[0].id == "louvre"
    assert idx.search_image(emblem(10), 1)[0].id == "raw" and idx.search_image(emblem(9), 1)[0].id == "rel"
