//! Filling a dispatch's templates with what only the launcher knows: the working directory as
//! the compute sees it, and secrets. Every failure is a message for the attempt's report,
//! naming the field.

use std::path::PathBuf;

use ferry_event::template::{Part, Template};

use crate::secrets::{ENV_PREFIX, Secrets, TaskScope};

/// Fills the launcher's placeholders of one template; `field` names it in errors.
pub fn fill(
    t: &Template,
    field: &str,
    work_dir: &str,
    secrets: &Secrets,
    scope: &TaskScope<'_>,
) -> Result<String, String> {
    let filled = t.fill(|part| match part {
        Part::WorkingDir => Ok(Some(work_dir.to_string())),
        // One answer whether the name does not exist or is not for this task: what a task can
        // learn from the error is never which names exist.
        Part::Secret(name) => match secrets.get_for(name, scope) {
            Some(v) => Ok(Some(v.to_string())),
            None => Err(format!(
                "{field}: secret {name:?} is not available to this task: the launcher holds no secret \
                 of that name for the task's namespace and flow (set {ENV_PREFIX}{name} in the \
                 launcher's environment, or add {name} to its secrets file, scoped to include this task)"
            )),
        },
        Part::Output { task, key } => Err(format!(
            "{field}: {{{{ outputs.{task}.{key} }}}} was not filled in before dispatch \
             (the scheduler resolves upstream outputs)"
        )),
        Part::Text(_) => Ok(None),
    })?;
    let text = filled
        .as_text()
        .ok_or_else(|| format!("{field}: a placeholder was left unfilled"))?;
    if text.contains('\0') {
        return Err(format!("{field}: the value contains a NUL byte"));
    }
    Ok(text)
}

/// Checks an input file name ([`ferry_flow::rules::input_file_name`]): a relative path that
/// stays inside the working directory.
pub fn check_input_name(name: &str) -> Result<PathBuf, String> {
    ferry_flow::rules::input_file_name(name).map_err(|why| format!("inputFiles: {name:?} is refused: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_input_names_are_refused_with_the_name() {
        for bad in [
            "../x",
            "/etc/x",
            "a/../../x",
            "a/..",
            "",
            "a\\b",
            "a\0b",
            ".",
            "./",
        ] {
            let err = check_input_name(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(check_input_name("./a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
    }

    #[test]
    fn templates_fill_working_dir_and_secrets_and_refuse_outputs() {
        let mut secrets = Secrets::new();
        secrets.insert("TOKEN", "s3cret");
        let t = Template(vec![
            Part::WorkingDir,
            Part::Text("/x?".into()),
            Part::Secret("TOKEN".into()),
        ]);
        let open = TaskScope::default();
        assert_eq!(
            fill(&t, "command[1]", "/w", &secrets, &open).unwrap(),
            "/w/x?s3cret"
        );
        let missing = Template(vec![Part::Secret("NOPE".into())]);
        let err = fill(&missing, "env.X", "/w", &secrets, &open).unwrap_err();
        assert!(
            err.contains("FERRY_SECRET_NOPE") && err.contains("env.X"),
            "{err}"
        );
        // A secret scoped away from the task is answered exactly like one that does not exist.
        let scope = crate::secrets::Scope {
            namespaces: Some(["other".to_string()].into()),
            flows: None,
        };
        secrets.insert_scoped("NOPE", "scoped-value", scope);
        assert_eq!(fill(&missing, "env.X", "/w", &secrets, &open).unwrap_err(), err);
        assert!(!err.contains("TOKEN"), "the error lists secret names: {err}");
        let out = Template(vec![Part::Output {
            task: "a".into(),
            key: "k".into(),
        }]);
        let err = fill(&out, "command[0]", "/w", &secrets, &open).unwrap_err();
        assert!(err.contains("outputs.a.k"), "{err}");
    }
}
