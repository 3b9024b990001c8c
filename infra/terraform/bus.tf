# The broker: Amazon MQ for RabbitMQ (default) or Amazon MSK, chosen by var.bus.

data "aws_secretsmanager_random_password" "bus" {
  count               = var.bus == "rabbitmq" ? 1 : 0
  password_length     = 32
  exclude_punctuation = true
}

resource "aws_mq_broker" "bus" {
  count                      = var.bus == "rabbitmq" ? 1 : 0
  broker_name                = var.name
  engine_type                = "RabbitMQ"
  engine_version             = var.mq_engine_version
  host_instance_type         = var.mq_instance_type
  deployment_mode            = var.mq_deployment_mode
  publicly_accessible        = false
  auto_minor_version_upgrade = true
  subnet_ids                 = var.mq_deployment_mode == "SINGLE_INSTANCE" ? [var.private_subnet_ids[0]] : var.private_subnet_ids
  security_groups            = [aws_security_group.bus.id]

  encryption_options {
    kms_key_id        = aws_kms_key.ferry.arn
    use_aws_owned_key = false
  }

  logs {
    general = true
  }

  maintenance_window_start_time {
    day_of_week = "SUNDAY"
    time_of_day = "03:00"
    time_zone   = "UTC"
  }

  user {
    username = "ferry"
    password = data.aws_secretsmanager_random_password.bus[0].random_password
  }

  lifecycle {
    # The password source yields a new value at every plan; the one set at creation stays, and
    # is the one written into the bus URL secret.
    ignore_changes = [user]
  }
}

locals {
  # amqps://ferry:PASSWORD@b-….mq.REGION.amazonaws.com:5671/%2F?namespace=NAME
  amqp_url = var.bus == "rabbitmq" ? format(
    "amqps://ferry:%s@%s/%%2F?namespace=%s",
    data.aws_secretsmanager_random_password.bus[0].random_password,
    trimprefix(aws_mq_broker.bus[0].instances[0].endpoints[0], "amqps://"),
    var.name,
  ) : null
  kafka_url = var.bus == "kafka" ? "kafka://${aws_msk_cluster.bus[0].bootstrap_brokers}?namespace=${var.name}&replication=3" : null
}

resource "aws_msk_cluster" "bus" {
  # checkov:skip=CKV_AWS_81:ferry's Kafka client is built without TLS (librdkafka without OpenSSL), so brokers are reached in plaintext inside the VPC; only the ferry security groups reach port 9092.
  count                  = var.bus == "kafka" ? 1 : 0
  cluster_name           = var.name
  kafka_version          = var.msk_kafka_version
  number_of_broker_nodes = var.msk_broker_count

  broker_node_group_info {
    instance_type   = var.msk_instance_type
    client_subnets  = var.private_subnet_ids
    security_groups = [aws_security_group.bus.id]

    storage_info {
      ebs_storage_info {
        volume_size = 100
      }
    }

    connectivity_info {
      public_access {
        type = "DISABLED"
      }
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.bus[0].arn
    revision = aws_msk_configuration.bus[0].latest_revision
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = aws_kms_key.ferry.arn

    encryption_in_transit {
      client_broker = "PLAINTEXT"
      in_cluster    = true
    }
  }

  client_authentication {
    unauthenticated = true
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.msk[0].name
      }
    }
  }
}

# ferry creates its topics itself with messages of up to 64 MiB; the brokers must accept them.
resource "aws_msk_configuration" "bus" {
  count          = var.bus == "kafka" ? 1 : 0
  name           = var.name
  kafka_versions = [var.msk_kafka_version]

  server_properties = <<-PROPERTIES
    auto.create.topics.enable=false
    message.max.bytes=67108864
    replica.fetch.max.bytes=67108864
    min.insync.replicas=2
  PROPERTIES
}
