"""Checks, through moto's own APIs, what scripts/infra-check.sh applied from this directory.

    python verify.py applied   ENDPOINT NAME OUTPUTS.json   the resources are there as the aws-batch
                                                            launcher needs them, and job state
                                                            events reach the queue
    python verify.py destroyed ENDPOINT NAME                nothing named NAME-…, /NAME/… or tagged
                                                            Deployment=NAME is left

NAME is the root configuration's var.name; OUTPUTS.json is `terraform output -json batch`. Prints
each check; exits 1, naming every problem, if any failed. Needs boto3 (moto[server] and checkov
both install it).
"""

import json
import sys

import boto3
from botocore.exceptions import BotoCoreError, ClientError

problems = []


def check(what, ok, detail=""):
    print(f"      {'ok' if ok else 'FAILED'}: {what}" + (f" ({detail})" if detail and not ok else ""))
    if not ok:
        problems.append(what)


def clients(endpoint):
    def client(service):
        return boto3.client(
            service,
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    return client


def applied(client, name, out):
    empty = sorted(k for k, v in out.items() if not v)
    check(f"every output of modules/batch has a value ({len(out)} outputs)", not empty, f"empty: {empty}")

    batch = client("batch")
    envs = batch.describe_compute_environments(computeEnvironments=[out["compute_environment_arn"]])[
        "computeEnvironments"
    ]
    env = envs[0] if envs else {}
    resources = env.get("computeResources", {})
    kind = (env.get("type"), env.get("state"), env.get("status"), resources.get("type"))
    check(
        "compute environment is MANAGED Fargate, ENABLED and VALID, in the two subnets with the jobs' "
        "security group",
        kind == ("MANAGED", "ENABLED", "VALID", "FARGATE")
        and len(resources.get("subnets", [])) == 2
        and resources.get("securityGroupIds") == [out["security_group_id"]],
        json.dumps(env, default=str),
    )

    queues = batch.describe_job_queues(jobQueues=[out["job_queue_arn"]])["jobQueues"]
    queue = queues[0] if queues else {}
    order = [o["computeEnvironment"] for o in queue.get("computeEnvironmentOrder", [])]
    check(
        f"job queue {name} is ENABLED and VALID on that compute environment",
        (queue.get("jobQueueName"), queue.get("state"), queue.get("status")) == (name, "ENABLED", "VALID")
        and order == [out["compute_environment_arn"]],
        json.dumps(queue, default=str),
    )

    sqs = client("sqs")
    queue_url = out["events_queue_url"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    queue_arn = attributes["QueueArn"]
    statements = json.loads(attributes.get("Policy", "{}")).get("Statement", [])
    senders = [s.get("Principal", {}).get("Service") for s in statements if s.get("Effect") == "Allow"]
    check(
        "events queue is SSE-encrypted and lets EventBridge send to it",
        attributes.get("SqsManagedSseEnabled") == "true" and senders == ["events.amazonaws.com"],
        json.dumps(attributes),
    )

    events = client("events")
    rules = events.list_rule_names_by_target(TargetArn=queue_arn)["RuleNames"]
    rule = events.describe_rule(Name=rules[0]) if len(rules) == 1 else {}
    pattern = json.loads(rule.get("EventPattern", "{}"))
    check(
        "one ENABLED EventBridge rule sends the job queue's Batch Job State Change events to the queue",
        rule.get("State") == "ENABLED"
        and pattern.get("source") == ["aws.batch"]
        and pattern.get("detail-type") == ["Batch Job State Change"]
        and pattern.get("detail", {}).get("jobQueue") == [out["job_queue_arn"]],
        f"rules targeting the queue: {rules}, pattern: {pattern}",
    )

    # moto never emits Batch events itself; publish two and see that only the job queue's arrives.
    def job_event(job_queue, job_id):
        detail = {"jobId": job_id, "jobName": "check", "jobQueue": job_queue, "status": "RUNNING"}
        return {"Source": "aws.batch", "DetailType": "Batch Job State Change", "Detail": json.dumps(detail)}

    other = out["job_queue_arn"].rsplit("/", 1)[0] + "/someone-else"
    sent = events.put_events(Entries=[job_event(other, "not-ours"), job_event(out["job_queue_arn"], "ours")])
    received = []
    for _ in range(3):
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for m in messages.get("Messages", []):
            received.append(json.loads(m["Body"]).get("detail", {}).get("jobId"))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        if "ours" in received:
            break
    check(
        "a state change of a job in the queue reaches the events queue, another queue's does not",
        sent.get("FailedEntryCount") == 0 and received == ["ours"],
        f"received job ids: {received}",
    )

    s3 = client("s3")
    bucket = out["staging_bucket"]
    try:
        sse = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
        versioning = s3.get_bucket_versioning(Bucket=bucket).get("Status")
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        bucket_policy = s3.get_bucket_policy(Bucket=bucket)["Policy"]
        check(
            f"staging bucket {bucket}: KMS-encrypted, versioned, public access blocked, TLS only, "
            "staged files expire",
            sse["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
            and versioning == "Enabled"
            and all(block.values())
            and "aws:SecureTransport" in bucket_policy
            and any(r.get("Status") == "Enabled" and "Expiration" in r for r in lifecycle),
            f"sse={sse} versioning={versioning} block={block} lifecycle={lifecycle}",
        )
    except ClientError as e:
        check(f"staging bucket {bucket} and its settings", False, str(e))

    groups = client("logs").describe_log_groups(logGroupNamePrefix=out["log_group"])["logGroups"]
    group = next((g for g in groups if g["logGroupName"] == out["log_group"]), {})
    check(
        f"log group {out['log_group']} exists, KMS-encrypted, with a retention",
        bool(group.get("kmsKeyId")) and group.get("retentionInDays", 0) > 0,
        json.dumps(group, default=str),
    )

    iam = client("iam")
    roles = ("job_execution_role_arn", "job_role_arn", "launcher_role_arn")
    role = {key: out[key].rsplit("/", 1)[1] for key in roles}
    listed = lambda value: [value] if isinstance(value, str) else value  # noqa: E731
    try:
        for role_name in role.values():
            iam.get_role(RoleName=role_name)
        inline = iam.list_role_policies(RoleName=role["job_execution_role_arn"])["PolicyNames"]
        attached = iam.list_attached_role_policies(RoleName=role["launcher_role_arn"])["AttachedPolicies"]
        attached = [p["PolicyArn"] for p in attached]
        policy_arn = out["launcher_policy_arn"]
        version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
        document = json.loads(document) if isinstance(document, str) else document
        granted = {}
        for s in document["Statement"]:
            for action in listed(s["Action"]):
                granted.setdefault(action, set()).update(listed(s["Resource"]))
        check(
            "job, job execution and launcher roles exist; the launcher's policy is attached to its role and lets it "
            "submit to the queue and pass the two job roles",
            inline == ["start-job"]
            and attached == [policy_arn]
            and out["job_queue_arn"] in granted.get("batch:SubmitJob", set())
            and {out["job_execution_role_arn"], out["job_role_arn"]} <= granted.get("iam:PassRole", set()),
            f"inline={inline} attached={attached} granted={ {k: sorted(v) for k, v in granted.items()} }",
        )
    except ClientError as e:
        check("the roles and the launcher's policy", False, str(e))

    group = client("ec2").describe_security_groups(GroupIds=[out["security_group_id"]])["SecurityGroups"][0]
    egress = [(p.get("IpProtocol"), p.get("FromPort"), p.get("ToPort")) for p in group["IpPermissionsEgress"]]
    check(
        "the jobs' security group lets nothing in and only HTTPS out",
        group["IpPermissions"] == [] and egress == [("tcp", 443, 443)],
        f"ingress={group['IpPermissions']} egress={egress}",
    )


def destroyed(client, name):
    left = []
    batch = client("batch")
    left += [
        e["computeEnvironmentArn"]
        for e in batch.describe_compute_environments()["computeEnvironments"]
        if e["computeEnvironmentName"].startswith(f"{name}-") and e.get("status") != "DELETED"
    ]
    left += [
        q["jobQueueArn"]
        for q in batch.describe_job_queues()["jobQueues"]
        if q["jobQueueName"] == name and q.get("status") != "DELETED"
    ]
    left += [b["Name"] for b in client("s3").list_buckets()["Buckets"] if b["Name"].startswith(f"{name}-")]
    left += client("sqs").list_queues(QueueNamePrefix=f"{name}-").get("QueueUrls", [])
    left += [r["Arn"] for r in client("events").list_rules(NamePrefix=f"{name}-")["Rules"]]
    groups = client("logs").describe_log_groups(logGroupNamePrefix=f"/{name}/")["logGroups"]
    left += [g["logGroupName"] for g in groups]
    iam = client("iam")
    left += [r["Arn"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(f"{name}-")]
    policies = iam.list_policies(Scope="Local")["Policies"]
    left += [p["Arn"] for p in policies if p["PolicyName"].startswith(f"{name}-")]
    ec2 = client("ec2")
    tagged = [{"Name": "tag:Deployment", "Values": [name]}]
    named = [{"Name": "group-name", "Values": [f"{name}-*"]}]
    left += [g["GroupId"] for g in ec2.describe_security_groups(Filters=named)["SecurityGroups"]]
    left += [v["VpcId"] for v in ec2.describe_vpcs(Filters=tagged)["Vpcs"]]
    left += [s["SubnetId"] for s in ec2.describe_subnets(Filters=tagged)["Subnets"]]
    # A KMS key is never deleted at once: destroy schedules its deletion.
    kms = client("kms")
    for key in kms.list_keys()["Keys"]:
        meta = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
        if meta.get("Description", "").startswith(f"{name}:") and meta["KeyState"] != "PendingDeletion":
            left.append(f"{meta['Arn']} ({meta['KeyState']})")
    check(f"nothing of {name} is left in moto", not left, f"left: {left}")


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("applied", "destroyed"):
        sys.exit(__doc__)
    mode, endpoint, name = sys.argv[1:4]
    client = clients(endpoint)
    try:
        if mode == "applied":
            with open(sys.argv[4]) as f:
                applied(client, name, json.load(f))
        else:
            destroyed(client, name)
    except (BotoCoreError, ClientError) as e:
        check(f"asking moto at {endpoint}", False, str(e))
    if problems:
        print(f"      {len(problems)} check(s) failed: {'; '.join(problems)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
