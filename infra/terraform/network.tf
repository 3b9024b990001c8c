# Security groups: each lets in only what its service is reached by. ferry's services never
# call each other, so none of them accepts connections from another; they only reach out to the
# broker, the database, the file system and AWS's endpoints.

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "ferry api load balancer: HTTPS from the allowed networks"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = toset(var.api_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "alb_to_api" {
  security_group_id            = aws_security_group.alb.id
  description                  = "to the api tasks"
  ip_protocol                  = "tcp"
  from_port                    = local.api_port
  to_port                      = local.api_port
  referenced_security_group_id = aws_security_group.service["logs"].id
}

# One group per service, so that the broker, the database and the file system can name exactly
# which services reach them.
resource "aws_security_group" "service" {
  # checkov:skip=CKV2_AWS_5:Each group is attached to its ECS service (aws_ecs_service.ferry[each.key] in ecs.tf); the check cannot follow for_each keys.
  for_each    = toset(["planner", "scheduler", "launcher", "logs"])
  name        = "${var.name}-${each.key}"
  description = "ferry ${each.key} tasks"
  vpc_id      = var.vpc_id
}

# Outbound HTTPS: image pulls, Secrets Manager, CloudWatch Logs, amqps to Amazon MQ; a launcher's
# tasks may fetch what they need.
resource "aws_vpc_security_group_egress_rule" "service_https" {
  for_each          = aws_security_group.service
  security_group_id = each.value.id
  description       = "HTTPS to AWS endpoints and image registries"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "service_bus" {
  for_each                     = aws_security_group.service
  security_group_id            = each.value.id
  description                  = "to the broker"
  ip_protocol                  = "tcp"
  from_port                    = var.bus == "rabbitmq" ? 5671 : 9092
  to_port                      = var.bus == "rabbitmq" ? 5671 : 9092
  referenced_security_group_id = aws_security_group.bus.id
}

resource "aws_vpc_security_group_egress_rule" "scheduler_db" {
  security_group_id            = aws_security_group.service["scheduler"].id
  description                  = "to PostgreSQL"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.db.id
}

resource "aws_vpc_security_group_egress_rule" "logs_efs" {
  security_group_id            = aws_security_group.service["logs"].id
  description                  = "to the log store's file system"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = aws_security_group.efs.id
}

resource "aws_vpc_security_group_ingress_rule" "logs_from_alb" {
  security_group_id            = aws_security_group.service["logs"].id
  description                  = "the api, from its load balancer"
  ip_protocol                  = "tcp"
  from_port                    = local.api_port
  to_port                      = local.api_port
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_security_group" "bus" {
  name        = "${var.name}-bus"
  description = "ferry broker: reached by ferry services only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "bus" {
  for_each                     = aws_security_group.service
  security_group_id            = aws_security_group.bus.id
  description                  = "from ferry ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = var.bus == "rabbitmq" ? 5671 : 9092
  to_port                      = var.bus == "rabbitmq" ? 5671 : 9092
  referenced_security_group_id = each.value.id
}

resource "aws_security_group" "db" {
  name        = "${var.name}-db"
  description = "ferry scheduler database: reached by the schedulers only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "db" {
  security_group_id            = aws_security_group.db.id
  description                  = "from the schedulers"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.service["scheduler"].id
}

resource "aws_security_group" "efs" {
  name        = "${var.name}-efs"
  description = "ferry log store file system: reached by the logs task only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "efs" {
  security_group_id            = aws_security_group.efs.id
  description                  = "NFS from the logs task"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = aws_security_group.service["logs"].id
}
