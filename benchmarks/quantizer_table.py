"""Render bench_quantizers.py JSON lines as one Markdown table (for the README).

One row per configuration, one column group (bytes per vector, recall@k,
QPS) per data set, in the order the records were written::

    python benchmarks/quantizer_table.py results/quantizers_fashion-mnist.jsonl \\
        results/quantizers_pypi-minilm.jsonl
"""

import json
import sys


def row_key(record):
    """(library, quantizer, rotation, reorder, range statistic) of a record."""
    ivfsq = record["library"] == "ivfsq"
    range_stat = record.get("range_stat_resolved") if ivfsq else None
    if range_stat == "quantile":
        range_stat += f" {record.get('range_quantile') or 0.001}"
    if ivfsq and record.get("range_stat") is None:
        range_stat += " (default)"
    return (
        record["library"],
        record["quantizer"],
        (record.get("transform") or "—") if ivfsq else "—",
        f"x{record.get('refine_ratio') or record.get('k_factor')}" if record.get("reorder") else "—",
        range_stat or "—",
    )


def main(paths):
    rows, datasets = {}, []
    for path in paths:
        with open(path) as file:
            for line in file:
                record = json.loads(line)
                dataset = record["dataset"]
                if dataset not in datasets:
                    datasets.append(dataset)
                rows.setdefault(row_key(record), {})[dataset] = record
    header = ["library", "quantizer", "rotation", "reorder", "range"]
    for dataset in datasets:
        header += [f"{dataset} B/vec", "recall@10", "QPS"]
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join(["---"] * 5 + ["---:"] * 3 * len(datasets)) + " |")
    for key, by_dataset in rows.items():
        cells = list(key)
        for dataset in datasets:
            record = by_dataset.get(dataset)
            if record is None:
                cells += ["", "", ""]
            else:
                cells += [
                    f"{record['bytes_per_vector']:.0f}",
                    f"{record['recall']:.4f}",
                    f"{record['qps']:,.0f}",
                ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
