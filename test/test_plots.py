"""Figures: one style per strategy family, identical curves merged, plain log-axis ticks."""

import matplotlib.colors as mcolors
import numpy as np

from cbo_ros.evaluation import plots


def test_strategy_families_share_a_hue_and_differ_within():
    server = [f'server_only_{r}' for r in (128, 176, 224, 288, 384)]
    colours = [mcolors.to_rgb(plots.strategy_style(n, server)[0]) for n in server]
    assert len(set(colours)) == len(server)                      # a ramp: all different ...
    assert all(b > r and b > g for r, g, b in colours)           # ... all blue
    darkness = [sum(c) for c in colours]
    assert darkness == sorted(darkness, reverse=True)            # darker for larger r
    cbo = [plots.strategy_style(n)[:3] for n in ('cbo', 'cbo_adaptive', 'cbo_exact',
                                                 'cbo_uncalibrated')]
    assert all(mcolors.to_rgb(c)[0] > mcolors.to_rgb(c)[2] for c, _, _ in cbo)   # all red
    assert len({(c, line, marker) for c, line, marker in cbo}) == 4
    assert plots.strategy_style('oracle')[:2] == ('black', '--')
    thresholds = [mcolors.to_rgb(plots.strategy_style(n)[0])
                  for n in ('raw_threshold', 'calibrated_threshold')]
    assert all(r > g > b for r, g, b in thresholds)              # orange family


def test_identical_series_are_merged_in_first_seen_order():
    groups = plots.merge_identical({'local_only': [0.1, 0.2], 'cbo': [0.3, 0.4],
                                    'server_only_96': [0.1, 0.2], 'cbo_adaptive': [0.3, 0.4],
                                    'oracle': [0.5, 0.6]})
    assert [names for names, _ in groups] == [['local_only', 'server_only_96'],
                                              ['cbo', 'cbo_adaptive'], ['oracle']]


def test_log_ticks_are_plain_numbers():
    assert [plots.plain_number(v) for v in (0.25, 0.5, 1.0, 2.0, 800.0)] == \
        ['0.25', '0.5', '1', '2', '800']


def test_figures_render(tmp_path):
    series = {'local_only': [0.1, 0.1, 0.1], 'server_only_128': [0.1, 0.2, 0.3],
              'cbo': [0.15, 0.25, 0.35], 'cbo_adaptive': [0.15, 0.25, 0.35],
              'oracle': [0.2, 0.3, 0.4]}
    path = plots.accuracy_curves([0.25, 1.0, 4.0], series, tmp_path / 'sweep.png',
                                 'uplink bandwidth (Mbit/s)', log_x=True)
    assert path.stat().st_size > 10000
    rng = np.random.default_rng(0)
    conf = rng.random(400)
    correct = (rng.random(400) < conf ** 2).astype(float)
    path = plots.reliability_diagrams([('raw', conf, correct), ('same', conf, correct)],
                                      tmp_path / 'reliability.png', 'test')
    assert path.stat().st_size > 10000
