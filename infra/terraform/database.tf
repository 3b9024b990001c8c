# The schedulers' PostgreSQL: every scheduler task shares it (inbox, outbox and job state).

locals {
  db_user = "ferry"
  db_name = "ferry"
  # No password in the URL: the schedulers get PGPASSWORD from the secret, which PostgreSQL's
  # client reads when the URL has none.
  db_url = "postgres://${local.db_user}@${aws_db_instance.scheduler.address}:${aws_db_instance.scheduler.port}/${local.db_name}"
}

resource "aws_db_subnet_group" "scheduler" {
  name       = var.name
  subnet_ids = var.private_subnet_ids
}

resource "aws_db_parameter_group" "scheduler" {
  name   = "${var.name}-postgres${var.db_engine_version}"
  family = "postgres${var.db_engine_version}"

  # ferry's PostgreSQL client is built without TLS: the connection stays inside the VPC, between
  # the scheduler tasks' and the database's security groups.
  parameter {
    name  = "rds.force_ssl"
    value = "0"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  parameter {
    name  = "log_connections"
    value = "1"
  }

  parameter {
    name  = "log_lock_waits"
    value = "1"
  }
}

resource "aws_db_instance" "scheduler" {
  # checkov:skip=CKV2_AWS_69:ferry's PostgreSQL client (sqlx without a TLS feature) cannot speak TLS yet; the database is reachable only from the scheduler tasks' security group in private subnets.
  # checkov:skip=CKV_AWS_161:ferry connects with a password from Secrets Manager; it has no IAM token authentication.
  identifier     = var.name
  engine         = "postgres"
  engine_version = var.db_engine_version
  instance_class = var.db_instance_class

  db_name             = local.db_name
  username            = local.db_user
  password_wo         = ephemeral.aws_secretsmanager_random_password.db.random_password
  password_wo_version = var.db_password_version

  allocated_storage     = var.db_allocated_storage
  max_allocated_storage = var.db_allocated_storage * 10
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.ferry.arn

  multi_az               = var.db_multi_az
  db_subnet_group_name   = aws_db_subnet_group.scheduler.name
  vpc_security_group_ids = [aws_security_group.db.id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.scheduler.name

  backup_retention_period    = 14
  copy_tags_to_snapshot      = true
  deletion_protection        = var.deletion_protection
  skip_final_snapshot        = false
  final_snapshot_identifier  = "${var.name}-final"
  auto_minor_version_upgrade = true

  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.ferry.arn
  performance_insights_retention_period = 7
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
}

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}
