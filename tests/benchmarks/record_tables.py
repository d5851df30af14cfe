"""Copy built paper tables and their claims from a reproduction's results.json into a chapter's assets.

A chapter shows the tables its method fills from a recorded reproduction (its runs take minutes to an hour on a CPU,
too long for the chapter itself). Usage:
  python tests/benchmarks/record_tables.py reports/quick/results.json --tables MMGA/table1_ablation,MMGA/table2_sota \\
         --out nbs/assets/mmga_quick_tables.json"""
import argparse, json
from pathlib import Path
from reid_nb.core import write_json_atomic
from reid_nb.tables import TABLE_IDS
from reid_nb.claims import claims as declared_claims, check_claims

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('results'); ap.add_argument('--tables', required=True); ap.add_argument('--out', required=True)
    ap.add_argument('--note', default='', help='one line on how the reproduction was made (shown above the tables)')
    a = ap.parse_args(argv)
    res = json.loads(Path(a.results).read_text())
    ids = [t.strip() for t in a.tables.split(',') if t.strip()]
    bad = [t for t in ids if t not in TABLE_IDS or t not in res['tables']]
    if bad: ap.error(f"tables {bad} are not in {a.results}; valid ids: {', '.join(TABLE_IDS)}")
    tables = {t: res['tables'][t] for t in ids}
    claims = {c: v for c, v in check_claims(res['tables']).items() if any(t in ids for t in declared_claims()[c][0])}
    runs = sorted({n for t in tables.values() for r in t['rows'] if r['ours'] for n in (r['runs'] or {}).values()})
    seconds = {r['run']: r['time (s)'] for r in res['runs'] if r['run'] in runs}
    health = {n: h for n, h in (res.get('health') or {}).items() if n in runs}
    write_json_atomic(a.out, dict(source=str(Path(a.results).name), preset=res['preset'], tables=tables, claims=claims, note=a.note,
                                  run_seconds=seconds, health=health))
    print(f"{a.out}: {len(tables)} table(s), {len(claims)} claim(s), {len(runs)} run(s), {sum(seconds.values())/60:.0f} min of runs")

if __name__ == '__main__': main()
