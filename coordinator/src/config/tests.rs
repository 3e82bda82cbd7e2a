//! Parsing example configurations, and refusing bad ones by name.

use medfed_protocol::model::ModelKind;

use super::*;

const EXAMPLE: &str = r#"
listen = "127.0.0.1:7400"
data_dir = "state"
schema = "schema.toml"
members = "certs/members.toml"
[tls]
ca_cert = "certs/ca.pem"
cert = "certs/coordinator.pem"
key = "certs/coordinator.key"
crl = "certs/crl.pem"
[task]
model = { kind = "mlp", hidden = [16, 8] }
rounds = 5
min_nodes = 2
[task.training]
local_epochs = 2
[strategy]
name = "fed_adam"
"#;

#[test]
fn parses_and_resolves_relative_paths() {
    let config = CoordinatorConfig::parse(EXAMPLE, Path::new("/etc/medfed")).unwrap();
    assert_eq!(config.data_dir, Path::new("/etc/medfed/state"));
    assert_eq!(config.members, Path::new("/etc/medfed/certs/members.toml"));
    assert_eq!(
        config.tls.crl.as_deref(),
        Some(Path::new("/etc/medfed/certs/crl.pem"))
    );
    assert_eq!(
        ModelKind::try_from(config.task.model).unwrap(),
        ModelKind::Mlp {
            hidden: vec![16, 8]
        }
    );
    assert_eq!(config.task.training.local_epochs, 2);
    assert_eq!(config.task.training.batch_size, 32);
    assert!(matches!(config.strategy, StrategyConfig::FedAdam { .. }));
    assert_eq!(config.danger_pause_at, None);
    assert!(
        !config.tls.allow_expired_crl,
        "an expired CRL is refused by default"
    );
    let lenient = EXAMPLE.replace("[task]", "allow_expired_crl = true\n[task]");
    let config = CoordinatorConfig::parse(&lenient, Path::new("/etc/medfed")).unwrap();
    assert!(config.tls.allow_expired_crl);
}

#[test]
fn the_evaluation_schedule_is_a_number_of_rounds_or_final() {
    let parse = |value: &str| {
        let text = EXAMPLE.replace(
            "rounds = 5",
            &format!("rounds = 5\nevaluate_every = {value}"),
        );
        CoordinatorConfig::parse(&text, Path::new("."))
    };
    assert_eq!(parse("3").unwrap().task.evaluate_every, 3);
    assert_eq!(
        parse("\"final\"").unwrap().task.evaluate_every,
        FINAL_EVALUATION_ONLY
    );
    for bad in ["0", "\"never\"", "-1"] {
        let error = parse(bad).unwrap_err().to_string();
        assert!(error.contains("evaluate_every"), "{bad}: {error}");
    }
    let default = CoordinatorConfig::parse(EXAMPLE, Path::new(".")).unwrap();
    assert_eq!(default.task.evaluate_every, 1);
}

#[test]
#[cfg(feature = "fault-injection")]
fn parses_the_test_only_pause_point() {
    for phase in PausePhase::ALL {
        let text = format!(
            "{EXAMPLE}\n[danger_pause_at]\nround = 2\nphase = \"{}\"\n",
            phase.name()
        );
        let config = CoordinatorConfig::parse(&text, Path::new(".")).unwrap();
        assert_eq!(config.danger_pause_at, Some(PausePoint { round: 2, phase }));
    }
    let typo = format!("{EXAMPLE}\n[danger_pause_at]\nround = 2\nphase = \"later\"\n");
    assert!(CoordinatorConfig::parse(&typo, Path::new(".")).is_err());
}

#[test]
#[cfg(not(feature = "fault-injection"))]
fn a_build_without_fault_injection_refuses_the_pause_point() {
    let text = format!("{EXAMPLE}\n[danger_pause_at]\nround = 2\nphase = \"unmasked\"\n");
    let error = CoordinatorConfig::parse(&text, Path::new(".")).unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::FaultInjection {
                key: "danger_pause_at"
            }
        ),
        "{error}"
    );
}

#[test]
fn settings_that_can_never_run_a_round_are_refused_naming_the_keys_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coordinator.toml");
    let alone = EXAMPLE.replace("min_nodes = 2", "min_nodes = 1");
    std::fs::write(&file, &alone).unwrap();
    let error = CoordinatorConfig::load(&file).unwrap_err().to_string();
    assert!(
        error.starts_with(&file.display().to_string())
            && error.contains("task.min_nodes = 1 can never run with secure aggregation on"),
        "{error}"
    );
    // Without secure aggregation one hospital may train (the coordinator then says every
    // figure is in the clear).
    let plain = format!("{alone}\n[secure_aggregation]\nenabled = false\n");
    assert!(CoordinatorConfig::parse(&plain, Path::new(".")).is_ok());
    let high = format!("{EXAMPLE}\n[secure_aggregation]\nthreshold = 3\n");
    let error = CoordinatorConfig::parse(&high, Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("secure_aggregation.threshold = 3 is more than task.min_nodes = 2"),
        "{error}"
    );
}

#[test]
fn rejects_unknown_fields_and_bad_values() {
    let typo = EXAMPLE.replace("min_nodes", "min_node");
    assert!(matches!(
        CoordinatorConfig::parse(&typo, Path::new(".")),
        Err(ConfigError::Syntax { .. })
    ));
    let start_below_min = EXAMPLE.replace("min_nodes = 2", "min_nodes = 2\nstart_nodes = 1");
    assert!(matches!(
        CoordinatorConfig::parse(&start_below_min, Path::new(".")),
        Err(ConfigError::Invalid { .. })
    ));
    // The member list is required: the manifest states its digest.
    let no_members = EXAMPLE.replace("members = \"certs/members.toml\"\n", "");
    assert!(matches!(
        CoordinatorConfig::parse(&no_members, Path::new(".")),
        Err(ConfigError::Syntax { .. })
    ));
    let zero = EXAMPLE.replace("min_nodes = 2", "min_nodes = 0");
    assert!(matches!(
        CoordinatorConfig::parse(&zero, Path::new(".")),
        Err(ConfigError::Invalid { .. })
    ));
}

#[test]
fn the_decision_threshold_and_the_release_rule_are_read_and_bad_ones_refused_by_key() {
    let config = CoordinatorConfig::parse(EXAMPLE, Path::new("/")).unwrap();
    assert_eq!(config.task.decision_threshold, DecisionThreshold::DEFAULT);
    assert_eq!(config.task.release, ReleaseRule::Last);
    let text = EXAMPLE.replace(
        "rounds = 5",
        "rounds = 5\ndecision_threshold = 0.15\nrelease = \"lowest_loss\"",
    );
    let config = CoordinatorConfig::parse(&text, Path::new("/")).unwrap();
    assert_eq!(config.task.decision_threshold.get(), 0.15);
    assert_eq!(config.task.release, ReleaseRule::LowestLoss);
    let weighted = EXAMPLE.replace("local_epochs = 2", "local_epochs = 2\npos_weight = 7.5");
    let config = CoordinatorConfig::parse(&weighted, Path::new("/")).unwrap();
    assert_eq!(config.task.plan(3).pos_weight, 7.5);
    assert_eq!(config.task.training_rule().pos_weight, 7.5);
    let unweighted = EXAMPLE.replace("local_epochs = 2", "local_epochs = 2\npos_weight = 0");
    let err = CoordinatorConfig::parse(&unweighted, Path::new("/")).unwrap_err();
    assert!(
        err.to_string().contains("task.training.pos_weight"),
        "{err}"
    );
    for (line, named) in [
        ("decision_threshold = 1.0", "decision_threshold"),
        ("release = \"best\"", "release"),
    ] {
        let text = EXAMPLE.replace("rounds = 5", &format!("rounds = 5\n{line}"));
        let err = CoordinatorConfig::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(named), "{line}: {err}");
    }
}

#[test]
fn the_model_card_table_is_read_optional_and_refuses_an_unknown_key() {
    let config = CoordinatorConfig::parse(EXAMPLE, Path::new("/")).unwrap();
    assert_eq!(config.model_card, CardText::default());
    let text = format!(
        "{EXAMPLE}[model_card]\nintended_use = \"Flag for review\"\npopulation = \"Adults\"\n\
         outcome = \"Death within 30 days\"\nlimitations = [\"Two hospitals only\"]\n\
         developers = \"Data team\"\ncontact = \"a@b.org\"\n"
    );
    let config = CoordinatorConfig::parse(&text, Path::new("/")).unwrap();
    assert_eq!(
        config.model_card.intended_use.as_deref(),
        Some("Flag for review")
    );
    assert_eq!(config.model_card.limitations, ["Two hospitals only"]);
    assert_eq!(config.model_card.contact.as_deref(), Some("a@b.org"));
    let typo = format!("{EXAMPLE}[model_card]\nintended_uses = \"x\"\n");
    let err = CoordinatorConfig::parse(&typo, Path::new("/")).unwrap_err();
    assert!(err.to_string().contains("intended_uses"), "{err}");
}

#[test]
fn a_dashboard_off_loopback_needs_tls_and_a_token() {
    let with = |table: &str| format!("{EXAMPLE}[dashboard]\n{table}\n");
    let local =
        CoordinatorConfig::parse(&with("listen = \"127.0.0.1:9464\""), Path::new("/c")).unwrap();
    assert_eq!(
        local.dashboard,
        Some(DashboardConfig {
            listen: "127.0.0.1:9464".parse().unwrap(),
            tls: false,
            token_file: None,
        })
    );
    for exposed in [
        "listen = \"0.0.0.0:9464\"",
        "listen = \"0.0.0.0:9464\"\ntls = true",
        "listen = \"0.0.0.0:9464\"\ntoken_file = \"t\"",
    ] {
        let error = CoordinatorConfig::parse(&with(exposed), Path::new("/c"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("dashboard.listen = 0.0.0.0:9464")
                && error.contains("dashboard.tls")
                && error.contains("dashboard.token_file"),
            "{error}"
        );
    }
    let exposed = CoordinatorConfig::parse(
        &with("listen = \"0.0.0.0:9464\"\ntls = true\ntoken_file = \"dash.token\""),
        Path::new("/c"),
    )
    .unwrap();
    assert_eq!(
        exposed.dashboard.unwrap().token_file.as_deref(),
        Some(Path::new("/c/dash.token"))
    );
    assert!(
        CoordinatorConfig::parse(&with("listen = \"127.0.0.1:1\"\nport = 2"), Path::new("/c"))
            .is_err()
    );
}

#[test]
fn a_torchscript_model_is_read_from_its_files_relative_to_the_configuration() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let config_for = |parameters: &str| {
        EXAMPLE.replace(
            "model = { kind = \"mlp\", hidden = [16, 8] }",
            &format!(
                "model = {{ kind = \"torchscript\", module = \"torchscript/risk_model.pt\", parameters = \"{parameters}\" }}"
            ),
        )
    };
    let config =
        CoordinatorConfig::parse(&config_for("torchscript/risk_model.safetensors"), &fixtures)
            .unwrap();
    assert_eq!(
        config.task.model,
        ModelConfig::TorchScript {
            module: fixtures.join("torchscript/risk_model.pt"),
            parameters: fixtures.join("torchscript/risk_model.safetensors"),
        }
    );
    let model = crate::task_model::task_model(&config.task.model, 6, 0).unwrap();
    // The committed gated model: a, g (8 × 6 and 8 each) and out (1 × 8 and 1).
    assert_eq!(model.spec.layout().len(), 2 * (48 + 8) + 9);
    assert_eq!(model.initial.len(), model.spec.layout().len());

    // A missing parameters file, and a module file given as the parameters, are refused at
    // load, naming the file.
    for (parameters, says) in [
        ("torchscript/absent.safetensors", "absent.safetensors"),
        (
            "torchscript/risk_model.pt",
            "risk_model.pt: not a readable safetensors file",
        ),
    ] {
        let error = CoordinatorConfig::parse(&config_for(parameters), &fixtures)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("task.model") && error.contains(says),
            "{error}"
        );
    }
}

#[test]
fn quantised_uploads_are_read_and_refused_without_a_level_bit_secure_aggregation_or_with_ddp() {
    let parse =
        |extra: &str| CoordinatorConfig::parse(&format!("{EXAMPLE}{extra}"), Path::new("."));
    let config = parse("\n[secure_aggregation]\nupload_bits = 8\nupdate_clip = 64.0\n").unwrap();
    assert_eq!(
        config.secure_aggregation.update_encoding(4),
        UpdateEncoding::Quantized(medfed_protocol::secagg::quantized::Quantized {
            clip: 64.0,
            level_bits: 6,
            lane_bits: 8,
        })
    );
    let refused = |extra: &str, needle: &str| {
        let error = parse(extra).unwrap_err().to_string();
        assert!(error.contains(needle), "{error}");
    };
    // 2-bit lanes: 2 hospitals · (2^1 − 1) < 4, 4 hospitals leave no level bit.
    assert!(parse("\n[secure_aggregation]\nupload_bits = 2\n").is_ok());
    let four = EXAMPLE.replace("min_nodes = 2", "min_nodes = 4");
    let error = CoordinatorConfig::parse(
        &format!("{four}\n[secure_aggregation]\nupload_bits = 2\n"),
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains(
            "secure_aggregation.upload_bits = 2 leaves a round of 4 hospitals no level bit"
        ),
        "{error}"
    );
    refused(
        "\n[secure_aggregation]\nupload_bits = 17\n",
        "upload_bits = 17 is not in 2..=16",
    );
    refused(
        "\n[secure_aggregation]\nenabled = false\nupload_bits = 8\n",
        "secure aggregation is off",
    );
    refused(
        "\n[task.distributed_dp]\nsample_rate = 0.1\nnoise_multiplier = 1.0\nclip_norm = 1.0\n\
         threshold = 2\nmax_nodes = 3\n[secure_aggregation]\nupload_bits = 8\n",
        "cannot be combined with [task.distributed_dp]",
    );
}
