"""Shared test set-up: generated data goes to a per-session folder, never to the user's cache."""
import os
import pytest


@pytest.fixture(scope='session', autouse=True)
def reid_nb_data(tmp_path_factory):
    "Point $REID_NB_DATA at a fresh folder for the whole session (subprocesses inherit it)."
    old = os.environ.get('REID_NB_DATA')
    path = tmp_path_factory.mktemp('reid_nb_data')
    os.environ['REID_NB_DATA'] = str(path)
    yield path
    if old is None: os.environ.pop('REID_NB_DATA', None)
    else: os.environ['REID_NB_DATA'] = old
