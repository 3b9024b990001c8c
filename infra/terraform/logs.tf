# One log group per ferry service, encrypted with the deployment's key. Services write JSON lines
# (FERRY_LOG_FORMAT=json), so Logs Insights can filter by job and attempt id.

locals {
  log_groups = toset(["planner", "scheduler", "launcher", "log-collector", "api", "init"])
}

resource "aws_cloudwatch_log_group" "service" {
  for_each          = local.log_groups
  name              = "/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.ferry.arn
}

resource "aws_cloudwatch_log_group" "msk" {
  count             = var.bus == "kafka" ? 1 : 0
  name              = "/${var.name}/msk"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.ferry.arn
}
