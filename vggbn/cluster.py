"""`vggbn cluster-init`: the AWS pieces `ray up` would otherwise create wide open.

Left to itself, Ray's bootstrap adds SSH from 0.0.0.0/0 to the group it creates and gives the head
AmazonEC2FullAccess + AmazonS3FullAccess, the workers nothing (no s3:// for trials). Instead, tagged
`vggbn:cluster-init=<name>` so that `--delete` removes exactly these: a security group (SSH from one
CIDR, all traffic within the group); a head role + instance profile (launch, tag and end this
cluster's nodes in one region, pass the worker role only, the results bucket); a worker role +
instance profile (the results bucket only); and a copy of cluster.yaml that uses them. Running it
again reuses what exists and brings it back to this state, saying what it changed, if anything.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import yaml

from vggbn.errors import ClusterInitError
from vggbn.files import write_atomic
from vggbn.sweep import ray_compat

TAG = "vggbn:cluster-init"
TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


# ---------------------------------------------------------------------- inputs
def check_cidr(text: str) -> str:
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise ClusterInitError(f"--ssh-cidr {text!r} is not an IPv4 network ({e}).", "your public address "
                               "as /32: --ssh-cidr $(curl -s https://checkip.amazonaws.com)/32") from None
    if net.version != 4:
        raise ClusterInitError(f"--ssh-cidr {text}: IPv6 is not supported.", "your IPv4 address as /32.")
    if net.prefixlen < 8:
        raise ClusterInitError(f"--ssh-cidr {net}: that is SSH open to the world (or a good part of it): "
                               f"refused.", "your own address as /32 (curl -s https://checkip.amazonaws.com).")
    return str(net)


def check_bucket(text: str) -> str:
    name = text[len("s3://"):].rstrip("/") if text.startswith("s3://") else text
    if not (re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", name) and ".." not in name
            and not re.fullmatch(r"[\d.]+", name) and not name.startswith(("xn--", "sthree-"))
            and not name.endswith(("-s3alias", "--ol-s3"))):
        raise ClusterInitError(f"--bucket {text!r} is not a valid S3 bucket name.", "3-63 characters: "
                               "lowercase letters, digits, '-' and '.', starting and ending with a letter "
                               "or digit, e.g. --bucket my-vggbn-results")
    return name


def load_template(path: str | Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterInitError(f"--config {path}: cannot read it ({e}).", "run it in the repository, "
                               "or give --config path/to/cluster.yaml") from None
    if not (isinstance(cfg, dict) and (cfg.get("provider") or {}).get("type") == "aws"
            and isinstance(cfg.get("available_node_types"), dict) and cfg.get("head_node_type")):
        raise ClusterInitError(f"--config {path}: not a Ray cluster config for AWS (provider.type: aws, "
                               f"available_node_types, head_node_type).", "start from cluster.yaml.")
    return cfg


# ---------------------------------------------------------------------- policies
def bucket_statements(bucket: str) -> list[dict[str, Any]]:
    return [{"Sid": "ResultsBucketList", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": f"arn:aws:s3:::{bucket}"},
            {"Sid": "ResultsBucketObjects", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": f"arn:aws:s3:::{bucket}/*"}]


def head_policy(bucket: str, worker_role_arn: str, region: str, cluster_name: str,
                start_stop: bool) -> dict[str, Any]:
    """What Ray's AWS node provider calls on the head (describe, run, tag, terminate; start/stop only
    when it caches stopped nodes), in one region, plus the results bucket."""
    in_region = {"aws:RequestedRegion": region}
    end = ["ec2:TerminateInstances"] + (["ec2:StartInstances", "ec2:StopInstances"] if start_stop else [])
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "LaunchWorkers", "Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:CreateTags", "ec2:Describe*"],
         "Resource": "*", "Condition": {"StringEquals": in_region}},
        # Ray tags every node it launches ray-cluster-name=<cluster_name>: only those can be ended
        {"Sid": "EndThisClustersNodes", "Effect": "Allow", "Action": end, "Resource": "*",
         "Condition": {"StringEquals": {**in_region, "ec2:ResourceTag/ray-cluster-name": cluster_name}}},
        {"Sid": "PassWorkerRoleOnly", "Effect": "Allow", "Action": ["iam:PassRole"], "Resource": worker_role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
        *bucket_statements(bucket)]}


def worker_policy(bucket: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": bucket_statements(bucket)}


# ---------------------------------------------------------------------- AWS
@contextlib.contextmanager
def aws_errors():
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        yield
    except NoCredentialsError:
        raise ClusterInitError("no AWS credentials found.", "`aws configure` (or AWS_PROFILE, or "
                               "AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY) for an identity that may create "
                               "IAM roles and EC2 security groups.") from None
    except NoRegionError:
        raise ClusterInitError("no AWS region.", "--region us-west-2 (or provider.region in the config).") from None
    except ClientError as e:
        err = e.response.get("Error", {})
        raise ClusterInitError(f"AWS refused {e.operation_name}: {err.get('Code')}: {err.get('Message')}",
                               "credentials that may manage IAM roles and EC2 security groups.") from None
    except BotoCoreError as e:
        raise ClusterInitError(f"AWS: {e}", "check the network, AWS_ENDPOINT_URL and the region.") from None


def _tags(name: str, **more: str) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in {TAG: name, **more}.items()]


def _tagged(tags: list[dict[str, str]] | None, name: str) -> bool:
    return {t["Key"]: t["Value"] for t in tags or []}.get(TAG) == name


def _ours(tags: list[dict[str, str]] | None, what: str, name: str) -> None:
    if not _tagged(tags, name):
        raise ClusterInitError(f"{what} exists and was not created by `vggbn cluster-init --name {name}`: "
                               f"left untouched.", "another --name, or remove it yourself.")


def _role(iam, role: str, policy: dict[str, Any], name: str, log: list[str]) -> str:
    try:
        found = iam.get_role(RoleName=role)["Role"]
        _ours(found.get("Tags"), f"IAM role {role}", name)
        arn = found["Arn"]
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(TRUST),
                              Description=f"vggbn cluster-init {name}", Tags=_tags(name))["Role"]["Arn"]
        log.append(f"created IAM role {role}")
    for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:  # ours: only our policy on it
        iam.detach_role_policy(RoleName=role, PolicyArn=p["PolicyArn"])
        log.append(f"detached {p['PolicyName']} from {role}")
    for p in set(iam.list_role_policies(RoleName=role)["PolicyNames"]) - {role}:
        iam.delete_role_policy(RoleName=role, PolicyName=p)
        log.append(f"deleted inline policy {p} of {role}")
    try:
        current = iam.get_role_policy(RoleName=role, PolicyName=role)["PolicyDocument"]
    except iam.exceptions.NoSuchEntityException:
        current = None
    if current != policy:
        iam.put_role_policy(RoleName=role, PolicyName=role, PolicyDocument=json.dumps(policy))
        log.append(f"{'set' if current is None else 'updated'} the policy of {role}")
    return arn


def _profile(iam, profile: str, role: str, name: str, log: list[str]) -> str:
    try:
        prof = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]
        _ours(prof.get("Tags"), f"instance profile {profile}", name)
    except iam.exceptions.NoSuchEntityException:
        prof = iam.create_instance_profile(InstanceProfileName=profile, Tags=_tags(name))["InstanceProfile"]
        log.append(f"created instance profile {profile}")
    roles = [r["RoleName"] for r in prof.get("Roles", [])]
    if roles != [role]:
        for other in roles:
            iam.remove_role_from_instance_profile(InstanceProfileName=profile, RoleName=other)
        iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)
        log.append(f"put role {role} in instance profile {profile}")
    return prof["Arn"]


def _vpc(ec2, cfg: dict[str, Any], region: str) -> str:
    nodes = [t.get("node_config") or {} for t in cfg["available_node_types"].values()]
    subnets = sorted({s for node in nodes for s in node.get("SubnetIds", [])})
    if subnets:  # the VPC the config names through its subnets
        vpcs = {s["VpcId"] for s in ec2.describe_subnets(SubnetIds=subnets)["Subnets"]}
        if len(vpcs) != 1:
            raise ClusterInitError(f"the config's SubnetIds span VPCs {sorted(vpcs)}.", "subnets of one VPC.")
        return vpcs.pop()
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise ClusterInitError(f"region {region} has no default VPC.", "name subnets of one VPC with "
                               "SubnetIds in each node_config of the config.")
    return vpcs[0]["VpcId"]


def _rules(perms: list[dict[str, Any]]) -> set[tuple]:
    """IpPermissions -> {(protocol, from port, to port, source)}: comparable whatever the grouping."""
    out = set()
    for p in perms:
        ports = (None, None) if str(p["IpProtocol"]) == "-1" else (p.get("FromPort"), p.get("ToPort"))
        sources = [*p.get("IpRanges", []), *p.get("Ipv6Ranges", []), *p.get("UserIdGroupPairs", []),
                   *p.get("PrefixListIds", [])]
        out |= {(str(p["IpProtocol"]), *ports, s.get("CidrIp") or s.get("CidrIpv6") or s.get("GroupId")
                 or s.get("PrefixListId")) for s in sources}
    return out


def _group(ec2, vpc: str, group: str, cidr: str, name: str, log: list[str]) -> str:
    found = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                  {"Name": "group-name", "Values": [group]}])["SecurityGroups"]
    if found:
        sg = found[0]
        _ours(sg.get("Tags"), f"security group {group} ({sg['GroupId']})", name)
    else:
        sg_id = ec2.create_security_group(
            GroupName=group, VpcId=vpc, Description=f"vggbn cluster-init {name}: SSH from one CIDR, intra-cluster",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(name, Name=group)}])["GroupId"]
        sg = ec2.describe_security_groups(GroupIds=[sg_id])["SecurityGroups"][0]
        log.append(f"created security group {group} ({sg_id}) in {vpc}")
    want = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": cidr}]},
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg["GroupId"]}]}]  # the nodes reach each other
    have = sg.get("IpPermissions", [])
    if _rules(have) != _rules(want):
        if have:  # the group is ours: exactly these two rules, nothing left over (e.g. an old CIDR)
            ec2.revoke_security_group_ingress(GroupId=sg["GroupId"], IpPermissions=have)
        ec2.authorize_security_group_ingress(GroupId=sg["GroupId"], IpPermissions=want)
        old = sorted(str(r[-1]) for r in _rules(have) - _rules(want))
        log.append(f"{group}: ingress = SSH from {cidr} + all traffic within the group"
                   + (f" (removed: {', '.join(old)})" if old else ""))
    return sg["GroupId"]


# ---------------------------------------------------------------------- the written config
def cluster_config(template: dict[str, Any], region: str, sg_id: str, head_arn: str, worker_arn: str) -> dict[str, Any]:
    cfg = copy.deepcopy(template)
    provider = cfg["provider"]
    provider.pop("security_group", None)  # without a group of ours Ray makes one, with SSH open to the world
    provider["region"] = region
    if any(not az.strip().startswith(region) for az in str(provider.get("availability_zone", region)).split(",")):
        provider.pop("availability_zone")  # the template's zones are another region's
    for key, node_type in cfg["available_node_types"].items():
        node = node_type.setdefault("node_config", {})
        node["SecurityGroupIds"] = [sg_id]
        node["IamInstanceProfile"] = {"Arn": head_arn if key == cfg["head_node_type"] else worker_arn}
    return cfg


def validate(cfg: dict[str, Any], where: str) -> None:
    """Ray's own checks, as `ray up` runs them (quietly: its INFO lines are not ours to print)."""
    import jsonschema

    try:
        ray_compat.validate_cluster_config(cfg)  # Ray's private autoscaler checks
    except (jsonschema.ValidationError, ValueError) as e:
        raise ClusterInitError(f"{where}: not valid for Ray's cluster schema: {str(e).splitlines()[0]}") from None


def init(bucket: str, ssh_cidr: str, *, out: str | Path, region: str | None = None, name: str = "vggbn",
         config: str | Path = "cluster.yaml", force: bool = False) -> list[str]:
    """Create or reuse the group and the profiles; write `out`. Returns what it did, a line each."""
    cidr, bucket, out = check_cidr(ssh_cidr), check_bucket(bucket), Path(out)
    if out.resolve() == Path(config).resolve():
        raise ClusterInitError(f"--out {out} is the template itself.", "--out cluster.local.yaml")
    if out.exists() and not force:
        raise ClusterInitError(f"--out {out} exists.", "--force to replace it (running again is safe: what "
                               "exists in AWS is reused), or another --out.")
    template = load_template(config)
    region = region or template["provider"].get("region")
    if not region:
        raise ClusterInitError(f"no AWS region: {config} names none.", "--region us-west-2")
    fake = "arn:aws:iam::000000000000:instance-profile/x"
    validate(cluster_config(template, region, "sg-0", fake, fake), str(config))  # before creating anything
    import boto3  # the input is checked: now AWS's client

    log: list[str] = []
    with aws_errors():
        aws = boto3.session.Session(region_name=region)  # the environment's credentials now, not cached ones
        ec2, iam = aws.client("ec2"), aws.client("iam")
        sg = _group(ec2, _vpc(ec2, template, region), f"{name}-cluster", cidr, name, log)
        worker_role = _role(iam, f"{name}-worker", worker_policy(bucket), name, log)
        start_stop = bool(template["provider"].get("cache_stopped_nodes", True))  # Ray's default: True
        _role(iam, f"{name}-head", head_policy(bucket, worker_role, region, template["cluster_name"], start_stop),
              name, log)
        worker = _profile(iam, f"{name}-worker", f"{name}-worker", name, log)
        head = _profile(iam, f"{name}-head", f"{name}-head", name, log)
    cfg = cluster_config(template, region, sg, head, worker)
    validate(cfg, str(out))
    text = (f"# Generated by `vggbn cluster-init` from {config}: edit that template (its comments explain each\n"
            f"# field) and run cluster-init again with --force, rather than editing this file.\n"
            f"# {region}: security group {sg} ({name}-cluster: SSH from {cidr} only, and all traffic between\n"
            f"# the cluster's nodes); head: instance profile {name}-head (launches and ends this cluster's nodes,\n"
            f"# passes only the worker role, bucket {bucket}); workers: {name}-worker (bucket {bucket} only).\n"
            f"# Remove them: vggbn cluster-init --delete --region {region} --name {name}\n"
            + yaml.safe_dump(cfg, sort_keys=False, width=120))
    unchanged = out.exists() and out.read_text() == text
    if not unchanged:
        write_atomic(out, text)
    if not log:
        log.append(f"no change in AWS: {name}-cluster ({sg}), {name}-head and {name}-worker are as they should be")
    elif any(line.startswith("created instance profile") for line in log):
        log.append("note: EC2 accepts a new instance profile only after ~10 s")
    return log + [f"{out} unchanged" if unchanged else f"wrote {out}: start the cluster with `ray up {out}`"]


def delete(*, region: str | None = None, name: str = "vggbn", config: str | Path = "cluster.yaml") -> list[str]:
    """Remove the security group, roles (with their policies) and profiles tagged by `init` with `name`."""
    import boto3
    from botocore.exceptions import ClientError

    region = region or load_template(config)["provider"].get("region")
    log: list[str] = []
    with aws_errors():
        aws = boto3.session.Session(region_name=region)  # the environment's credentials now, not cached ones
        ec2, iam = aws.client("ec2"), aws.client("iam")
        for sg in ec2.describe_security_groups(Filters=[{"Name": f"tag:{TAG}", "Values": [name]}])["SecurityGroups"]:
            try:
                ec2.delete_security_group(GroupId=sg["GroupId"])
            except ClientError as e:
                if e.response["Error"]["Code"] != "DependencyViolation":
                    raise
                raise ClusterInitError(f"security group {sg['GroupName']} ({sg['GroupId']}) is still in use.",
                                       "`ray down` the cluster first, then delete again.") from None
            log.append(f"deleted security group {sg['GroupName']} ({sg['GroupId']})")
        for what in (f"{name}-head", f"{name}-worker"):  # an instance profile and a role of that name each
            with contextlib.suppress(iam.exceptions.NoSuchEntityException):
                prof = iam.get_instance_profile(InstanceProfileName=what)["InstanceProfile"]
                if not _tagged(prof.get("Tags"), name):
                    log.append(f"left instance profile {what}: not tagged {TAG}={name}")
                else:
                    for r in prof["Roles"]:
                        iam.remove_role_from_instance_profile(InstanceProfileName=what, RoleName=r["RoleName"])
                    iam.delete_instance_profile(InstanceProfileName=what)
                    log.append(f"deleted instance profile {what}")
            with contextlib.suppress(iam.exceptions.NoSuchEntityException):
                if not _tagged(iam.get_role(RoleName=what)["Role"].get("Tags"), name):
                    log.append(f"left IAM role {what}: not tagged {TAG}={name}")
                    continue
                for p in iam.list_role_policies(RoleName=what)["PolicyNames"]:
                    iam.delete_role_policy(RoleName=what, PolicyName=p)
                for p in iam.list_attached_role_policies(RoleName=what)["AttachedPolicies"]:
                    iam.detach_role_policy(RoleName=what, PolicyArn=p["PolicyArn"])
                for p in iam.list_instance_profiles_for_role(RoleName=what)["InstanceProfiles"]:
                    iam.remove_role_from_instance_profile(InstanceProfileName=p["InstanceProfileName"], RoleName=what)
                iam.delete_role(RoleName=what)
                log.append(f"deleted IAM role {what} and its policy")
    return log or [f"nothing to delete: nothing tagged {TAG}={name} in {region} or in IAM"]
