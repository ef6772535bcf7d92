"""Package build for ortsae: every piece of metadata comes from settings.ini (nbdev 2 layout, no pkg_resources)."""
from configparser import ConfigParser
from pathlib import Path
import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=["="])
cfg.read(here / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]
py_versions = ["3.10", "3.11", "3.12", "3.13"]
lic = licenses[cfg["license"]]
min_python = cfg["min_python"]
reqs = cfg.get("requirements", "").split()
extras = {"dev": cfg.get("dev_requirements", "").split(), "offline": cfg.get("offline_requirements", "").split()}
scripts = [s.strip() for s in cfg.get("console_scripts", "").split() if s.strip()]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license=lic[0],
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"],
        "License :: " + lic[1],
        "Natural Language :: " + cfg["language"],
    ] + ["Programming Language :: Python :: " + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg["git_url"],
    author=cfg["author"],
    author_email=cfg["author_email"],
    keywords=cfg["keywords"],
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    include_package_data=True,
    install_requires=reqs,
    extras_require=extras,
    python_requires=">=" + min_python,
    entry_points={"console_scripts": scripts, "nbdev": [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
    zip_safe=False,
)
