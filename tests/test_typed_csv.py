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
