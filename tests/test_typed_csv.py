"""ExampleGen encodes CSV columns with the declared types, whatever values a file happens to hold."""

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that

from models import features
from pipeline.dag import typed_csv


def _write(path, census_tract):
    row = {c: "" for c in features.CSV_COLUMNS}
    row.update(
        fare="7.25",
        tips="1.0",
        trip_start_hour="9",
        trip_start_day="3",
        trip_start_month="5",
        trip_start_timestamp="1400269500",
        trip_seconds="420",
        payment_type="Cash",
        pickup_census_tract=census_tract,
    )
    path.write_text(",".join(features.CSV_COLUMNS) + "\n" + ",".join(row[c] for c in features.CSV_COLUMNS) + "\n")


@pytest.mark.parametrize("census_tract", ["", "17031081500"])
def test_a_column_is_encoded_alike_whether_empty_or_full_of_integers(tmp_path, census_tract):
    _write(tmp_path / "data.csv", census_tract)

    def check(examples):
        assert len(examples) == 1
        feature = examples[0].features.feature
        # Declared "string": bytes_list either way (TFX's inference would give int64_list or no type).
        assert feature["pickup_census_tract"].WhichOneof("kind") == "bytes_list"
        assert list(feature["pickup_census_tract"].bytes_list.value) == (
            [census_tract.encode()] if census_tract else []
        )
        assert feature["trip_seconds"].int64_list.value == [420]
        assert feature["fare"].float_list.value == [pytest.approx(7.25)]

    with beam.Pipeline() as p:
        properties = {"input_base": str(tmp_path), "custom_config": typed_csv.types_config(features.COLUMN_TYPES)}
        examples = p | typed_csv._TypedCsvToExample(properties, "*.csv")
        assert_that(examples, check)


def test_a_column_without_a_declared_type_is_refused():
    with pytest.raises(ValueError, match="no declared type for column\\(s\\) surge"):
        typed_csv.column_infos(["fare", "surge"], features.COLUMN_TYPES)


def test_every_csv_column_has_a_declared_type():
    assert set(features.COLUMN_TYPES) == set(features.CSV_COLUMNS)
    assert set(features.COLUMN_TYPES.values()) <= {"int", "float", "string"}


def test_rows_that_do_not_parse_as_their_declared_types_are_skipped(tmp_path):
    # Within data.max_bad_row_fraction the input check lets such rows through; ExampleGen skips them.
    _write(tmp_path / "data.csv", "17031081500")
    good = (tmp_path / "data.csv").read_text().splitlines()[1]
    bad = good.replace("7.25", "abc")
    with open(tmp_path / "data.csv", "a") as f:
        f.write(bad + "\n" + good + "\n" + "1,2,3\n")

    def check(examples):
        assert len(examples) == 2
        assert all(e.features.feature["fare"].float_list.value == [pytest.approx(7.25)] for e in examples)

    with beam.Pipeline() as p:
        properties = {"input_base": str(tmp_path), "custom_config": typed_csv.types_config(features.COLUMN_TYPES)}
        examples = p | typed_csv._TypedCsvToExample(properties, "*.csv")
        assert_that(examples, check)


def _edge_rows(path):
    """Rows whose encoding is easy to get wrong: empty cells, signs, float32 rounding and overflow,
    nan/inf, int64 extremes, quoted strings with commas and non-ASCII, a blank line, bad rows."""
    columns = features.CSV_COLUMNS
    base = {c: "" for c in columns}
    base.update(fare="7.25", tips="1.0", trip_start_hour="9", trip_seconds="420", payment_type="Cash")
    variants = [
        {},
        {"fare": "-0.0", "tips": "1e39", "trip_seconds": "-9223372036854775808", "trip_start_hour": " 12"},
        {"fare": "nan", "tips": "-inf", "trip_seconds": "9223372036854775807", "trip_start_hour": "+7"},
        {"fare": "0.1", "tips": "3.4028235677973366e38", "trip_seconds": "0", "company": '"Flash, Cab"'},
        {"fare": "1e-50", "tips": "16777217", "company": "Taxi Affiliation Services", "payment_type": "Crédit"},
        {"fare": "abc"},  # bad: not a number
        {"trip_seconds": "9223372036854775808"},  # bad: outside int64
        {"trip_seconds": "1.5"},  # bad: not an integer
    ]
    lines = [",".join(columns)]
    for v in variants:
        row = dict(base, **v)
        lines.append(",".join(row[c] for c in columns))
    lines += ["", "1,2,3"]  # a blank line; a row with the wrong number of values (bad)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("data", ["taxi_slice", "edge_cases"])
def test_examplegen_writes_the_bytes_of_tfx_csvexamplegen(tmp_path, taxi_slice, data):
    """The batched encoder (CsvRowEncoder) writes, split by split, the serialized examples TFX's own
    conversion (_ParsedCsvToTfExample, then WriteSplit's SerializeToString) writes, and splits them alike."""
    import json

    import tensorflow as tf
    from tfx.components.example_gen import write_split

    if data == "taxi_slice":
        source = taxi_slice
    else:
        source = tmp_path / "edge"
        source.mkdir()
        _edge_rows(source / "data.csv")
    output = {"split_config": {"splits": [{"name": "train", "hash_buckets": 2}, {"name": "eval", "hash_buckets": 1}]}}
    properties = {
        "input_base": str(source),
        "input_config": json.dumps({"splits": [{"name": "single_split", "pattern": "*.csv"}]}),
        "output_config": json.dumps(output),
        "custom_config": typed_csv.types_config(features.COLUMN_TYPES),
    }
    executor = typed_csv.TypedCsvExampleGenExecutor()
    written = {}
    for path in ("tfx", "encoder"):
        generate = (
            super(typed_csv.TypedCsvExampleGenExecutor, executor).GenerateExamplesByBeam
            if path == "tfx"
            else executor.GenerateExamplesByBeam
        )
        with beam.Pipeline() as p:
            for name, split in generate(p, dict(properties)).items():  # written as TFX's ExampleGen writes
                split | f"Write[{name}]" >> write_split.WriteSplit(str(tmp_path / path / name), "tfrecords_gzip")
        for name in ("train", "eval"):
            files = sorted((tmp_path / path / name).glob("*.gz"))
            written[path, name] = sorted(
                r.numpy() for r in tf.data.TFRecordDataset([str(f) for f in files], compression_type="GZIP")
            )
    for split in ("train", "eval"):
        assert written["encoder", split] == written["tfx", split], split
    total = len(written["encoder", "train"]) + len(written["encoder", "eval"])
    assert total == (3000 if data == "taxi_slice" else 5)  # edge cases: 5 good rows; the blank line and 4 bad skipped
    assert written["encoder", "train"] and written["encoder", "eval"]
