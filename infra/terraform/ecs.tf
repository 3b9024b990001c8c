# ferry's services on ECS Fargate, all from one image, each started as `ferry service NAME`:
#
#   planner    ferry service planner         (any number of tasks)
#   scheduler  ferry service scheduler       (var.services.scheduler.count tasks sharing PostgreSQL)
#   launcher   ferry service launcher        (local launcher: tasks run as processes in its container)
#   logs       ferry service log-collector + ferry service api, one task sharing the SQLite log store
#
# Every task starts with a short init container that writes the secrets ferry reads as files
# (the bus key file; the api's tokens file) into a volume only that task has, owned by ferry's
# user; then ferry's containers start, non-root, on read-only root file systems with every
# capability dropped.

resource "aws_ecs_cluster" "ferry" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_cluster_capacity_providers" "ferry" {
  cluster_name       = aws_ecs_cluster.ferry.name
  capacity_providers = ["FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

locals {
  bus_env     = var.bus == "kafka" ? [{ name = "FERRY_BUS", value = local.kafka_url }] : []
  bus_secrets = var.bus == "rabbitmq" ? [{ name = "FERRY_BUS", valueFrom = aws_secretsmanager_secret.bus_url[0].arn }] : []

  common_env = concat(local.bus_env, [
    { name = "FERRY_DATA_DIR", value = local.data_dir },
    { name = "FERRY_BUS_KEY_FILE", value = local.bus_key_file },
    { name = "FERRY_LOG", value = var.log_level },
    { name = "FERRY_LOG_FORMAT", value = "json" },
  ])

  # What each ferry container adds to the common environment and secrets.
  ferry_containers = {
    planner = {
      service = "planner", group = "planner", task = "planner",
      env     = [], secrets = [], ports = [], data = "data"
    }
    scheduler = {
      service = "scheduler", group = "scheduler", task = "scheduler",
      env     = [{ name = "FERRY_DB", value = local.db_url }],
      secrets = [{ name = "PGPASSWORD", valueFrom = "${aws_secretsmanager_secret.db.arn}:password::" }],
      ports   = [], data = "data"
    }
    launcher = {
      service = "launcher", group = "launcher", task = "launcher",
      env     = [{ name = "TMPDIR", value = "/tmp" }], secrets = [], ports = [], data = "data"
    }
    log-collector = {
      service = "log-collector", group = "log-collector", task = "logs",
      env     = [], secrets = [], ports = [], data = "logstore"
    }
    api = {
      service = "api", group = "api", task = "logs",
      env = [
        { name = "FERRY_LISTEN", value = "0.0.0.0:${local.api_port}" },
        { name = "FERRY_ALLOWED_HOST", value = var.api_domain_name },
        { name = "FERRY_TOKENS_FILE", value = local.tokens_file },
      ],
      secrets = [], ports = [local.api_port], data = "logstore"
    }
  }

  # Writes the secret files and gives ferry's user the task's scratch volumes. It runs as root
  # (to chown) with every capability but CHOWN dropped, and exits.
  init_script = join(" && ", [
    "umask 077",
    "printf '%s\\n' \"$FERRY_BUS_KEYS\" > ${local.bus_key_file}",
    "if [ -n \"$${FERRY_API_TOKENS:-}\" ]; then printf '%s\\n' \"$FERRY_API_TOKENS\" > ${local.tokens_file}; fi",
    "chown -R ${var.ferry_user} ${local.secrets_dir}",
    "for d in /scratch/*; do [ -d \"$d\" ] && chown ${var.ferry_user} \"$d\"; done; true",
  ])

  # Every Linux capability Docker grants by default, but CHOWN.
  init_drop_caps = ["DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP", "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE", "SETFCAP"]

  # The task-private volumes of each task: "run" holds the secret files; "data" is ferry's data
  # directory on task storage (the logs task has its EFS volume instead); "tmp" is /tmp.
  task_scratch = {
    planner   = ["data", "tmp"]
    scheduler = ["data", "tmp"]
    launcher  = ["data", "tmp"]
    logs      = ["tmp"]
  }

  init_container = {
    for task in local.ecs_services : task => {
      name                   = "init"
      image                  = var.init_image
      essential              = false
      user                   = "0"
      entryPoint             = ["sh", "-c"]
      command                = [local.init_script]
      readonlyRootFilesystem = true
      secrets = concat(
        [{ name = "FERRY_BUS_KEYS", valueFrom = aws_secretsmanager_secret.bus_keys.arn }],
        task == "logs" ? [{ name = "FERRY_API_TOKENS", valueFrom = aws_secretsmanager_secret.api_tokens.arn }] : [],
      )
      mountPoints = concat(
        [{ sourceVolume = "run", containerPath = local.secrets_dir, readOnly = false }],
        [for v in local.task_scratch[task] : { sourceVolume = v, containerPath = "/scratch/${v}", readOnly = false }],
      )
      linuxParameters = { capabilities = { drop = local.init_drop_caps } }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service["init"].name
          awslogs-region        = local.region
          awslogs-stream-prefix = task
        }
      }
    }
  }

  ferry_container = {
    for name, c in local.ferry_containers : name => {
      name                   = name
      image                  = var.image
      essential              = true
      user                   = var.ferry_user
      entryPoint             = var.ferry_command
      command                = ["service", c.service]
      readonlyRootFilesystem = true
      stopTimeout            = 120
      environment            = concat(local.common_env, c.env)
      secrets                = concat(local.bus_secrets, c.secrets)
      portMappings           = [for p in c.ports : { containerPort = p, protocol = "tcp" }]
      dependsOn              = [{ containerName = "init", condition = "SUCCESS" }]
      mountPoints = [
        { sourceVolume = "run", containerPath = local.secrets_dir, readOnly = true },
        { sourceVolume = c.data, containerPath = local.data_dir, readOnly = false },
        { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
      ]
      linuxParameters = {
        initProcessEnabled = true
        capabilities       = { drop = ["ALL"] }
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service[c.group].name
          awslogs-region        = local.region
          awslogs-stream-prefix = name
        }
      }
    }
  }

  task_containers = {
    planner   = [local.init_container["planner"], local.ferry_container["planner"]]
    scheduler = [local.init_container["scheduler"], local.ferry_container["scheduler"]]
    launcher  = [local.init_container["launcher"], local.ferry_container["launcher"]]
    logs      = [local.init_container["logs"], local.ferry_container["log-collector"], local.ferry_container["api"]]
  }

  task_size = {
    planner   = var.services.planner
    scheduler = var.services.scheduler
    launcher  = var.services.launcher
    logs      = var.services.logs
  }
}

resource "aws_ecs_task_definition" "ferry" {
  for_each                 = local.ecs_services
  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = local.task_size[each.key].cpu
  memory                   = local.task_size[each.key].memory
  execution_role_arn       = aws_iam_role.execution[each.key].arn
  task_role_arn            = aws_iam_role.task[each.key].arn
  container_definitions    = jsonencode(local.task_containers[each.key])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  dynamic "ephemeral_storage" {
    for_each = each.key == "launcher" ? [var.launcher_ephemeral_storage_gib] : []
    content {
      size_in_gib = ephemeral_storage.value
    }
  }

  volume {
    name = "run"
  }

  volume {
    name = "tmp"
  }

  dynamic "volume" {
    for_each = each.key == "logs" ? [] : ["data"]
    content {
      name = volume.value
    }
  }

  dynamic "volume" {
    for_each = each.key == "logs" ? ["logstore"] : []
    content {
      name = volume.value
      efs_volume_configuration {
        file_system_id     = aws_efs_file_system.logs.id
        transit_encryption = "ENABLED"
        authorization_config {
          access_point_id = aws_efs_access_point.logs.id
          iam             = "ENABLED"
        }
      }
    }
  }
}

locals {
  service_count = {
    planner   = var.services.planner.count
    scheduler = var.services.scheduler.count
    launcher  = var.services.launcher.count
    # One writer of the SQLite log store at a time.
    logs = 1
  }
}

resource "aws_ecs_service" "ferry" {
  for_each         = local.ecs_services
  name             = each.key
  cluster          = aws_ecs_cluster.ferry.id
  task_definition  = aws_ecs_task_definition.ferry[each.key].arn
  desired_count    = local.service_count[each.key]
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"

  # The logs task is stopped before its successor starts: two writers must never share the log
  # store. The others roll one task at a time.
  deployment_minimum_healthy_percent = each.key == "logs" ? 0 : 50
  deployment_maximum_percent         = each.key == "logs" ? 100 : 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.service[each.key].id]
    assign_public_ip = false
  }

  dynamic "load_balancer" {
    for_each = each.key == "logs" ? [1] : []
    content {
      target_group_arn = aws_lb_target_group.api.arn
      container_name   = "api"
      container_port   = local.api_port
    }
  }

  health_check_grace_period_seconds = each.key == "logs" ? 60 : null

  depends_on = [aws_lb_listener.https, aws_efs_mount_target.logs]
}
