from setuptools import find_packages, setup

setup(
    name="hvdlm",
    version="0.1.0",
    description="Train GPT-style language models with Horovod data parallelism",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hvdlm", "hvdlm.*"]),
    package_data={"hvdlm.plan": ["penalties.json"]},  # the measured loss penalties `hvdlm plan` reads
    python_requires=">=3.11",  # tomllib (config.py)
    # horovod is built by scripts/install.sh (0.28.1 needs a C++17 patch for torch >= 2.1),
    # so it is not listed here: pip would try the unpatched sdist and fail.
    # orjson: `hvdlm prepare` reads JSON Lines ~4x faster with it (the standard json is the fallback)
    install_requires=["torch>=2.1", "numpy", "mpi4py", "tqdm", "tokenizers", "tensorboard", "matplotlib", "zstandard",
                      "orjson"],
    # `hvdlm export --format hf` writes safetensors; transformers loads the result
    extras_require={"test": ["pytest", "pytest-timeout"], "hf": ["transformers", "safetensors"]},
    entry_points={"console_scripts": ["hvdlm = hvdlm.cli:main"]},
)
