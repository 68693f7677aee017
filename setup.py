from setuptools import find_packages, setup

setup(
    name="mlpipe",
    version="0.1.0",
    description="TFX training and serving pipeline: taxi data to a blessed model in a TF Serving directory",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline*", "models*", "data*", "serving*"]),
    package_data={"data": ["schema/*.pbtxt"], "pipeline": ["templates/*"]},
    entry_points={"console_scripts": ["mlpipe=pipeline.cli:entry"]},
)
