"""`vggbn cluster-init`: the AWS security group and instance profiles for `ray up` (vggbn.cluster)."""

from __future__ import annotations

import argparse

from vggbn import cluster
from vggbn.errors import UsageError


def cmd_cluster_init(args: argparse.Namespace) -> int:
    if args.delete:
        lines = cluster.delete(region=args.region, name=args.name, config=args.config)
    elif not (args.bucket and args.ssh_cidr):
        raise UsageError("--bucket and --ssh-cidr are required (unless --delete).", "e.g. --bucket my-results "
                         "--ssh-cidr $(curl -s https://checkip.amazonaws.com)/32")
    else:
        lines = cluster.init(args.bucket, args.ssh_cidr, out=args.out, region=args.region, name=args.name,
                             config=args.config, force=args.force)
    print("\n".join(lines))
    return 0
