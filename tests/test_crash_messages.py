"""What a rank says when a collective fails: a Gloo timeout is named as such, not blamed on a peer.

Seen for real in `hvdlm bench sync` on the test cluster with a 10 Mbit/s link: DiLoCo's 43 MB fp32
exchange needs ~35 s there, and Gloo gives up on a send after HOROVOD_GLOO_TIMEOUT_SECONDS (30 s
by default) on both ranks, though neither failed.
"""

import argparse

from horovod.common.exceptions import HorovodInternalError

from hvdlm import cli

GLOO_TIMEOUT = ("[/tmp/horovod-0.28.1/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:133] "
                "Timed out waiting 30000ms for send operation to complete")


def crash(tmp_path, exc):
    code = cli.report_crash(argparse.Namespace(out_dir=str(tmp_path)), 1, exc)
    return code, (tmp_path / "error-rank1.log").read_text()


def test_a_gloo_timeout_says_so_and_how_to_raise_it(tmp_path, capsys):
    code, log = crash(tmp_path, HorovodInternalError(GLOO_TIMEOUT))
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1, err
    assert "rank 1" in err and "ran past Gloo's timeout of 30 s" in err and "HOROVOD_GLOO_TIMEOUT_SECONDS" in err
    assert "another rank failed" not in err
    assert "Timed out waiting 30000ms" in log  # the traceback keeps Gloo's own words


def test_a_lost_peer_is_still_a_lost_peer(tmp_path, capsys):
    code, _ = crash(tmp_path, HorovodInternalError("Connection closed by peer [10.213.0.12]:47331"))
    err = capsys.readouterr().err
    assert code == 3 and "another rank failed or left during a collective" in err and "Gloo's timeout" not in err
