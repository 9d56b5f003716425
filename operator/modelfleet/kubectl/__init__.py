"""`kubectl modelfleet`: inspect and steer Canaries and ModelPools from the command line.

Installed as the `kubectl-modelfleet` script (modelfleet.kubectl.main:main), so
`kubectl modelfleet ...` finds it on PATH (kubectl's plugin discovery). Only the client
side lives here: manual actions are requested through the `modelfleet.io/action`
annotation and `spec.paused`, and the operator carries them out; which request acts in
which phase is stated once, in modelfleet.canary.manual, and read here for the hints.

    kubectl modelfleet status CANARY [--watch] [-o json]    status.py
    kubectl modelfleet promote|abort|retry CANARY           actions.py
    kubectl modelfleet pause|resume CANARY                  pause.py
    kubectl modelfleet pools [-A]                           pools.py
    kubectl modelfleet report CANARY --html FILE.html \\     report.py
        [--from-pools | --stable-url URL --candidate-url URL |
         --router-url URL --operator-token-file FILE]        renders.py, report_pairs.py

formatting.py holds the shared table and number formatting, client.py the Kubernetes
connection, main.py the argument parser.
"""

from __future__ import annotations

PROG = "kubectl modelfleet"
