"""Feature names, column types and roles of the taxi data: the one place that lists them."""

# Every column of the input CSV, in file order. A CSV whose header differs is rejected before the run.
CSV_COLUMNS = (
    "pickup_community_area",
    "fare",
    "trip_start_month",
    "trip_start_hour",
    "trip_start_day",
    "trip_start_timestamp",
    "pickup_latitude",
    "pickup_longitude",
    "dropoff_latitude",
    "dropoff_longitude",
    "trip_miles",
    "pickup_census_tract",
    "dropoff_census_tract",
    "payment_type",
    "company",
    "trip_seconds",
    "dropoff_community_area",
    "tips",
)

# How ExampleGen encodes each CSV column (instead of inferring types per run, which drifts between
# spans: a column that is empty in one span and has values in another). Categorical codes are
# strings, so that "" can stand for a missing value everywhere, the raw serving signature included.
COLUMN_TYPES = {
    "pickup_community_area": "string",
    "fare": "float",
    "trip_start_month": "int",
    "trip_start_hour": "int",
    "trip_start_day": "int",
    "trip_start_timestamp": "int",
    "pickup_latitude": "float",
    "pickup_longitude": "float",
    "dropoff_latitude": "float",
    "dropoff_longitude": "float",
    "trip_miles": "float",
    "pickup_census_tract": "string",
    "dropoff_census_tract": "string",
    "payment_type": "string",
    "company": "string",
    "trip_seconds": "int",
    "dropoff_community_area": "string",
    "tips": "float",
}

# Numeric features: missing values are filled with the training mean, then z-scored.
NUMERIC_FEATURES = ("trip_miles", "fare", "trip_seconds")

# Coordinates: bucketized into quantiles; a missing value gets a bucket of its own.
BUCKET_FEATURES = ("pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude")
BUCKET_COUNT = 10

# Categorical features (strings or integer codes): a vocabulary each; a missing value is its own
# category (MISSING_CATEGORY), unseen values fall into OOV buckets.
CATEGORICAL_FEATURES = (
    "payment_type",
    "company",
    "trip_start_hour",
    "trip_start_day",
    "trip_start_month",
    "pickup_community_area",
    "dropoff_community_area",
    "pickup_census_tract",
    "dropoff_census_tract",
)
VOCAB_SIZE = 1000
OOV_BUCKETS = 10
MISSING_CATEGORY = "__missing__"

# Raw columns the model reads at serving time.
MODEL_FEATURES = NUMERIC_FEATURES + BUCKET_FEATURES + CATEGORICAL_FEATURES

# Label: was the tip more than 20% of the fare? Computed from raw `tips` and `fare` in Transform.
RAW_LABEL = "tips"
LABEL = "big_tipper"
BIG_TIP_FRACTION = 0.2

# Columns the Evaluator slices metrics by.
SLICE_FEATURES = ("trip_start_hour", "payment_type")

# Features that change with the calendar by nature: a new quarter has new months, a day's window one
# weekday, an hour's window one hour. Monitoring reports their shift but does not alert on it
# (config: monitoring.seasonal_features).
SEASONAL_FEATURES = ("trip_start_month", "trip_start_day", "trip_start_hour")

# Column that orders the data in time (used to split data into spans).
TIMESTAMP_COLUMN = "trip_start_timestamp"


def transformed_name(key: str) -> str:
    return f"{key}_xf"
