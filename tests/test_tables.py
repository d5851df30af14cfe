"The paper tables: data file ↔ built tables, run sources, records filling columns, and the HTML pages."
import html, json
from pathlib import Path
import pytest

from reid_nb.runner import RunRecord
from reid_nb.tables import (TABLE_IDS, row_sources, footnotes, paper_tables, paper_table, build_tables, runs_for_tables,
                            tables_for_run, row_runs, table_frame, write_table_pages, tables_index_html, table_file_name)

DATA = json.loads((Path(__file__).parents[1] / 'reid_nb' / 'paper_tables.json').read_text(encoding='utf-8'))


def record(name, results, dataset='synthreid', protocol=None, preset='smoke'):
    "A RunRecord with invented numbers (fractions, like a real run's)."
    main = next(iter(results.values()))
    return RunRecord(name=name, preset=preset, config={'dataset': dataset}, metrics=main, chance={},
                     dataset={'name': dataset, 'protocol': protocol or {'eval': 'market'}}, results=results)


def metrics(rank1, mAP=None, ci=True, **extra):
    m = {'rank1': rank1, 'rank5': rank1 + 0.1, 'rank10': rank1 + 0.12, 'rank20': rank1 + 0.2, **extra}
    if mAP is not None: m['mAP'] = mAP
    if ci: m['ci95'] = {k: [v - 0.05, v + 0.05] for k, v in m.items() if isinstance(v, float)}
    return m


def test_package_file_is_the_shared_data():
    shared = Path('/work/shared/paper_tables.json')
    if shared.exists():
        assert (Path(__file__).parents[1] / 'reid_nb' / 'paper_tables.json').read_bytes() == shared.read_bytes()
    assert paper_tables() == DATA


def test_every_table_present_with_the_papers_numbers_in_order():
    expected_ids = [f'{p}/{k}' for p, ts in DATA.items() if not p.startswith('_') for k in ts if k != 'source']
    assert list(TABLE_IDS) == expected_ids and len(TABLE_IDS) == 12
    tables = build_tables([], 'smoke')
    assert list(tables) == expected_ids
    for tid, t in tables.items():
        paper, key = tid.split('/')
        src = DATA[paper][key]
        assert t['columns'] == src['columns']
        assert [r['row'] for r in t['rows']] == list(src['rows'])
        for r in t['rows']:
            assert list(r['paper']) == src['columns']
            assert list(r['paper'].values()) == src['rows'][r['row']]   # equal to the JSON, unrounded
            assert r['ours'] == (r['row'] in src['reproduced_rows'])
            assert r['preset'] == 'smoke'
            if r['ours']:
                assert r['measured'] == dict.fromkeys(src['columns']) and r['ci95'] == {} and r['runs'] == {}
                assert r['run'] is None and r['dataset'] is None
            else:
                assert (r['measured'], r['ci95'], r['run'], r['runs'], r['dataset']) == (None,) * 5
        assert t['title'].startswith(paper + ' Table ') and t['footnotes']
    json.dumps(tables)  # plain data


def test_row_sources_cover_exactly_the_reproduced_rows():
    for tid in TABLE_IDS:
        reproduced = paper_table(tid)['reproduced_rows']
        assert set(row_sources()[tid]) == set(reproduced), tid
        assert set(row_sources()[tid]) <= set(paper_table(tid)['rows'])


def test_runs_for_tables():
    assert runs_for_tables(['MMGA/table1_ablation']) == [
        'mmga-att-duke', 'mmga-att-market', 'mmga-baseline-duke', 'mmga-baseline-market', 'mmga-dmga-duke',
        'mmga-dmga-market', 'mmga-duke', 'mmga-market', 'mmga-wmga-duke', 'mmga-wmga-market']
    assert runs_for_tables(['MMGA/table2_sota']) == ['mmga-duke', 'mmga-market']
    assert runs_for_tables(['MGRAN/table4_cuhk03', 'MGRAN/table6_region_level_alignment']) == [
        'mgran-cuhk03-detected', 'mgran-cuhk03-labeled', 'mgran-pl-cuhk03-detected', 'mgran-pl-cuhk03-labeled']
    assert runs_for_tables(['FMN/table1_branches']) == ['fmn-cuhk03np-detected', 'fmn-cuhk03np-labeled', 'fmn-duke', 'fmn-market']
    assert runs_for_tables(['FMN/table5_masked_layer']) == ['fmn-market', 'fmn-res2-market', 'fmn-res3-market', 'fmn-res4-market']
    everything = runs_for_tables(TABLE_IDS)
    assert len(everything) == 25 and everything == sorted(set(everything))
    assert tables_for_run('mmga-market') == ['MMGA/table1_ablation', 'MMGA/table2_sota']
    assert tables_for_run('fmn-market') == ['FMN/table1_branches', 'FMN/table2_market', 'FMN/table5_masked_layer']
    assert tables_for_run('nope') == []
    for run in everything: assert tables_for_run(run), run


def test_unknown_table_id_lists_the_valid_ones():
    for call in (lambda: runs_for_tables(['MMGA/table3']), lambda: paper_table('MMGA/table3'),
                 lambda: build_tables([], 'smoke', ['MMGA/table3'])):
        with pytest.raises(ValueError) as e: call()
        assert "Unknown table id 'MMGA/table3'" in str(e.value)
        assert all(repr(t) in str(e.value) for t in TABLE_IDS)


def test_a_record_fills_its_columns_times_100_with_intervals():
    rec = record('mmga-market', {'single query': metrics(0.453, 0.312)})
    tables = build_tables([rec], 'smoke')
    t1 = tables['MMGA/table1_ablation']
    mmga = t1['rows'][-1]
    assert mmga['row'] == 'MMGA' and mmga['ours']
    assert mmga['measured'] == {'market_sq_r1': 100 * 0.453, 'market_sq_map': 100 * 0.312, 'duke_r1': None, 'duke_map': None}
    assert mmga['ci95'] == {'market_sq_r1': [100 * (0.453 - 0.05), 100 * (0.453 + 0.05)],
                            'market_sq_map': [100 * (0.312 - 0.05), 100 * (0.312 + 0.05)]}
    assert mmga['run'] == 'mmga-market' and mmga['runs'] == {'market_sq_r1': 'mmga-market', 'market_sq_map': 'mmga-market'}
    assert mmga['dataset'] == 'synthreid' and mmga['paper']['market_sq_r1'] == 95.0
    t2 = tables['MMGA/table2_sota']['rows'][-1]
    assert t2['measured']['market_sq_r5'] == 100 * (0.453 + 0.1) and t2['measured']['market_sq_r10'] == 100 * (0.453 + 0.12)
    assert t2['measured']['duke_r1'] is None
    for r in t1['rows'][:-1]: assert r['measured'] == dict.fromkeys(t1['columns']) and r['run'] is None   # other runs missing
    # the record feeds no other table
    for tid, t in tables.items():
        if tid.startswith('MMGA'): continue
        assert all(r['runs'] in (None, {}) for r in t['rows']), tid


def test_result_keys_protocols_and_missing_metrics():
    sgs = {'eval': 'single_gallery_shot', 'split': 3, 'n_splits': 20}
    recs = [
        record('mgran-market', {'single query': metrics(0.5, 0.3), 'multi query': metrics(0.6, 0.4, ci=False)}),
        record('mgran-cuhk03-labeled', {'single-gallery-shot, split 3 of 20': {'rank1': 0.7, 'rank5': 0.9}},
               dataset='synthreid-cuhk03', protocol=sgs),
        record('fmn-market', {'single query': metrics(0.45, 0.31, dim=4096), 'GRN': metrics(0.40, 0.28, dim=2048),
                              'LAN': {'rank1': 0.38, 'mAP': 0.25},  # an old record: no rank20, no ci95
                              'single query + re-ranking': metrics(0.5, 0.42)}),
        record('fmn-res3-market', {'single query': metrics(0.41, 0.29, mask_size='14x14')})]
    t = build_tables(recs, 'smoke')
    mg = {r['row']: r for r in t['MGRAN/table2_market']['rows']}['MGRAN']
    assert mg['measured'] == {'market_sq_r1': 50.0, 'market_sq_map': 30.0, 'market_mq_r1': 60.0, 'market_mq_map': 40.0}
    assert mg['ci95']['market_sq_r1'] == [45.0, 55.00000000000001] and mg['ci95']['market_mq_r1'] is None
    c4 = {r['row']: r for r in t['MGRAN/table4_cuhk03']['rows']}['MGRAN']
    assert c4['measured'] == {'cuhk03_labeled_r1': 70.0, 'cuhk03_labeled_r5': 90.0, 'cuhk03_detected_r1': None, 'cuhk03_detected_r5': None}
    assert c4['runs'] == {'cuhk03_labeled_r1': 'mgran-cuhk03-labeled', 'cuhk03_labeled_r5': 'mgran-cuhk03-labeled'}
    assert c4['dataset'] == 'synthreid-cuhk03'
    rl = {r['row']: r for r in t['MGRAN/table6_region_level_alignment']['rows']}
    assert rl['MGRAN-RL (region-level)']['measured'] == c4['measured'] and rl['MGRAN-PL (part-level)']['run'] is None
    f1 = {r['row']: r for r in t['FMN/table1_branches']['rows']}
    assert f1['GRN']['measured']['dim'] == 2048 and f1['FMN']['measured']['dim'] == 4096
    assert f1['GRN']['measured']['market_sq_r1'] == 40.0 and f1['LAN']['measured']['market_sq_r1'] == 38.0
    assert f1['LAN']['measured']['market_sq_r20'] is None and f1['LAN']['ci95'] == {'market_sq_r1': None, 'market_sq_map': None}
    assert f1['LAN']['measured']['dim'] is None and 'dim' not in f1['LAN']['runs']
    f2 = {r['row']: r for r in t['FMN/table2_market']['rows']}
    assert f2['Basel. (GRN)']['measured']['market_sq_r1'] == 40.0 and f2['FMN']['measured']['market_sq_r1'] == 45.0
    assert f2['FMN+re-rank']['measured'] == {'market_sq_r1': 50.0, 'market_sq_map': 42.0}
    f5 = {r['row']: r for r in t['FMN/table5_masked_layer']['rows']}
    assert f5['Res3']['measured'] == {'mask_size': '14x14', 'market_sq_r1': 100 * 0.41, 'market_sq_map': 100 * 0.29}
    assert f5['Pool1']['measured']['mask_size'] is None and f5['Pool1']['measured']['market_sq_r1'] == 45.0
    assert f5['Res2']['run'] is None and 'ci95' not in f5['Res3']['measured']


def test_records_from_json_and_bad_record_sets(tmp_path):
    rec = record('mmga-market', {'single query': metrics(0.4, 0.3)})
    rec.save(tmp_path)
    loaded = RunRecord.load(tmp_path)
    a, b = build_tables([rec], 'smoke'), build_tables([loaded], 'smoke')
    assert a == b
    with pytest.raises(ValueError, match="Two records are named 'mmga-market'"): build_tables([rec, loaded], 'smoke')
    with pytest.raises(ValueError, match="made by preset 'smoke', but the tables are built for preset 'cpu'"):
        build_tables([rec], 'cpu')
    with pytest.raises(ValueError, match="Unknown preset 'tiny'"): build_tables([], 'tiny')


def test_footnotes_name_the_inconsistencies():
    t = build_tables([], 'smoke')
    joined = {tid: ' '.join(x['footnotes']) for tid, x in t.items()}
    assert 'DPFL (labeled 43.00, detected 40.70)' in joined['MGRAN/table4_cuhk03'] and 'DaF (27.50, 26.40)' in joined['MGRAN/table4_cuhk03']
    assert 'MGCAM' in joined['MMGA/table2_sota'] and '[29]' in joined['MMGA/table2_sota']
    for tid in ('FMN/table1_branches', 'FMN/table4_cuhk03_new_protocol'):
        assert all(s in joined[tid] for s in ('38.00', '38.2', '40.71', '41.0'))
    for tid, text in joined.items():
        assert 'not the dataset the paper used' in text and 'copied from the paper' in text
        assert '95 % percentile-bootstrap intervals over the test queries' in text and 'training seeds' in text
        assert all(n in t[tid]['footnotes'] for n in footnotes(tid))
    # the numbers the footnotes quote are the data file's
    rows4 = DATA['MGRAN']['table4_cuhk03']['rows']
    assert rows4['DPFL'][0] == 43.0 and rows4['DPFL'][2] == 40.7 and rows4['DaF'][0] == 27.5 and rows4['DaF'][2] == 26.4
    f1, f4 = DATA['FMN']['table1_branches'], DATA['FMN']['table4_cuhk03_new_protocol']
    col1 = lambda c: f1['columns'].index(c)
    assert f1['rows']['GRN'][col1('cuhk03np_detected_r1')] == 38.0 and f4['rows']['Basel. (GRN)'][0] == 38.2
    assert f1['rows']['FMN'][col1('cuhk03np_labeled_r1')] == 40.71 and f4['rows']['FMN'][2] == 41.0


def test_table_frame():
    rec = record('mmga-market', {'single query': metrics(0.453, 0.312)})
    df = table_frame(build_tables([rec], 'smoke', ['MMGA/table1_ablation'])['MMGA/table1_ablation'])
    assert list(df.columns) == ['market_sq_r1', 'market_sq_map', 'duke_r1', 'duke_map', 'run'] and len(df) == 10
    assert df.loc[('MMGA', 'ours'), 'market_sq_r1'] == '45.3 [40.3, 50.3]'
    assert df.loc[('MMGA', 'ours'), 'duke_map'] == 'not run' and df.loc[('MMGA', 'paper'), 'market_sq_r1'] == '95.0'
    assert df.loc[('DMGA', 'ours'), 'run'] == 'not run in this preset'
    quoted = table_frame(build_tables([], 'smoke', ['MMGA/table2_sota'])['MMGA/table2_sota'])
    assert ('WARCA', 'paper (quoted)') in quoted.index and quoted.loc[('WARCA', 'paper (quoted)'), 'duke_r1'] == '—'


def test_pages_atomic_complete_and_escaped(tmp_path, monkeypatch):
    rec = record('mmga-market', {'single query': metrics(0.453, 0.312)}, dataset='synth <b>&</b> "market"')
    tables = build_tables([rec], 'smoke')
    paths = write_table_pages(tmp_path, tables)
    assert [p.name for p in paths] == [table_file_name(t) for t in TABLE_IDS]
    assert sorted(p.name for p in (tmp_path / 'tables').iterdir()) == sorted(p.name for p in paths)  # no .tmp- leftovers
    assert not [p for p in tmp_path.rglob('*') if '.tmp-' in p.name]
    for tid, p in zip(TABLE_IDS, paths):
        page = p.read_text()
        assert page.startswith('<!doctype html>') and page.rstrip().endswith('</html>')
        for n in tables[tid]['footnotes']: assert html.escape(n) in page
        assert 'preset <b>smoke</b>' in page and html.escape(tables[tid]['title']) in page
    mmga = (tmp_path / 'tables' / 'MMGA_table1_ablation.html').read_text()
    assert 'synth &lt;b&gt;&amp;&lt;/b&gt; &quot;market&quot;' in mmga and 'synth <b>&' not in mmga
    assert '45.3<span class="ci">[40.3, 50.3]</span>' in mmga
    assert mmga.count('not run in this preset (needs run(s):') == 4 and 'mmga-wmga-market, mmga-wmga-duke' in mmga
    assert mmga.count('badge repro') == 5 and mmga.count('class="notrun"') == 2    # MMGA's Duke columns
    sota = (tmp_path / 'tables' / 'MMGA_table2_sota.html').read_text()
    assert sota.count('badge quoted') == 18 and 'MSCAN' in sota
    assert '<td>76.90</td>' in (tmp_path / 'tables' / 'MGRAN_table2_market.html').read_text()  # as printed in the paper
    empty = build_tables([], 'smoke', ['FMN/table3_duke'])
    page = write_table_pages(tmp_path / 'e', empty)[0].read_text()
    assert page.count('not run in this preset') >= 3 and 'dataset <b>not run in this preset</b>' in page
    # a write that fails half-way leaves the previous page whole and no temporary file
    before = paths[0].read_text()
    orig = Path.write_text
    def half(self, text, *a, **k): orig(self, text[:50]); raise OSError('disk full')
    monkeypatch.setattr(Path, 'write_text', half)
    with pytest.raises(OSError, match='disk full'): write_table_pages(tmp_path, build_tables([], 'smoke'))
    monkeypatch.undo()
    assert paths[0].read_text() == before and not [p for p in tmp_path.rglob('*') if '.tmp-' in p.name]


def test_index_fragment():
    rec = record('mmga-market', {'single query': metrics(0.453, 0.312)})
    frag = tables_index_html(build_tables([rec], 'smoke'))
    assert frag.count('<li>') == 12 and 'href="tables/MMGA_table1_ablation.html"' in frag
    assert '1 of 5 reproduced row(s) measured' in frag and '0 of 3 reproduced row(s) measured' in frag
    assert '<html' not in frag


def test_row_runs_rejects_unknown_rows():
    with pytest.raises(ValueError, match="Unknown reproduced row of MMGA/table2_sota 'MGN'"): row_runs('MMGA/table2_sota', 'MGN')
