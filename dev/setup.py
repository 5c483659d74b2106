"""orderflow-dev: the developer's tools of orderflow (local stack, generators, demo), apart from the runtime
package that Flink/Dataflow workers install (the repository's setup.py). ``make setup`` installs it editable
into the project's venv, without dependencies: they are orderflow's extras ``local``, ``api`` and ``dev``."""
from setuptools import find_packages, setup

setup(
    name="orderflow-dev",
    version="0.1.0",
    description="orderflow's developer tools: the local stack, generators and make demo",
    python_requires=">=3.10",
    packages=find_packages(include=["orderflow_dev", "orderflow_dev.*"]),
    package_data={"orderflow_dev": ["local/node/*.js", "local/node/*.json", "local/jvm/*.xml",
                                    "local/jvm/apicurio/*.xml"]},
    install_requires=["orderflow"],
)
