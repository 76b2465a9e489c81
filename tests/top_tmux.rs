//! `vitalgate top` and `vitalgate demo --top` as a person sees them (issue 17, acceptance 1,
//! 4 and 5): a real daemon, the real binary in tmux at 80x24, keys sent with `send-keys`, the
//! screen read with `capture-pane`.

mod live_support;

use live_support::*;

/// The shell line: a marker, `top`, its exit code, and whether the terminal is back in
/// canonical (cooked) mode: `icanon`, or `-icanon` if raw mode was left on.
fn top_command(g: &Gateway) -> String {
    format!(
        "echo before-top; {BIN} top --config {}; echo top-exit=$?; stty -a | tr ' ;' '\\n\\n' | grep -x -- '-\\{{0,1\\}}icanon'",
        g.config_arg()
    )
}

#[test]
fn top_shows_each_device_with_its_state_and_latest_values_with_units() {
    let g = Gateway::new(&format!(
        "{}{}",
        sim_device("ox-1", "stable", 200),
        sim_device("ox-2", "stable", 200).replace("seed = 5", "seed = 6")
    ));
    let _d = g.start();
    wait_path(&g.path("live.sock"), 30);
    let t = Tmux::start("top-devices", &top_command(&g), &[]);
    let screen = t.wait_for("both device rows with values", 30, |s| {
        s.contains("ox-1") && s.contains("ox-2") && s.contains("SpO2") && s.contains("/min")
    });
    let rows: Vec<&str> = screen
        .lines()
        .filter(|l| l.starts_with(">ox-") || l.starts_with(" ox-"))
        .collect();
    assert_eq!(rows.len(), 2, "{screen}");
    for line in rows {
        assert!(line.contains("connected"), "{line}");
    }
    assert!(screen.contains("HEALTHY"), "{screen}");
    assert!(screen.contains("outbox"), "{screen}");
    assert!(screen.contains("uplink none configured"), "{screen}");
    assert!(
        screen.contains(" q quit"),
        "the footer fits the 80x24 screen:\n{screen}"
    );
}

#[test]
fn top_shows_an_alert_appearing_with_its_priority_in_words() {
    let g = Gateway::new(&sim_device("sick-1", "deteriorating", 300));
    let _d = g.start();
    wait_path(&g.path("live.sock"), 30);
    let t = Tmux::start("top-alert", &top_command(&g), &[]);
    let before = t.wait_for("the patient row", 30, |s| s.contains(" p1 "));
    assert!(
        before.contains("no open alerts"),
        "the course starts well:\n{before}"
    );
    let after = t.wait_for("a NEWS2 alert in the patient row", 90, |s| {
        s.lines()
            .any(|l| l.contains(" p1 ") && l.contains("news2:"))
    });
    let row = after.lines().find(|l| l.contains(" p1 ")).unwrap();
    assert!(
        row.contains("MED") || row.contains("HIGH"),
        "priority as text: {row}"
    );
}

#[test]
fn top_arrows_select_a_patient_for_detail_and_question_mark_shows_help() {
    let g = Gateway::new(&sim_device("ox-1", "stable", 200));
    let _d = g.start();
    wait_path(&g.path("live.sock"), 30);
    let t = Tmux::start("top-keys", &top_command(&g), &[]);
    t.wait_for("the device detail", 30, |s| s.contains("device ox-1"));
    t.keys(&["Down"]);
    t.wait_for("the patient detail after Down", 10, |s| {
        s.contains("patient p1 ") && s.contains("NEWS2")
    });
    t.keys(&["Up"]);
    t.wait_for("the device detail after Up", 10, |s| {
        s.contains("device ox-1")
    });
    t.keys(&["?"]);
    t.wait_for("the help box", 10, |s| {
        s.contains(" help ") && s.contains("q / Esc")
    });
}

#[test]
fn top_quits_on_q_and_restores_the_terminal() {
    let g = Gateway::new(&sim_device("ox-1", "stable", 200));
    let _d = g.start();
    wait_path(&g.path("live.sock"), 30);
    let t = Tmux::start("top-quit", &top_command(&g), &[]);
    let running = t.wait_for("the dashboard", 30, |s| s.contains("LATEST VALUES"));
    assert!(
        !running.contains("before-top"),
        "top draws on the alternate screen"
    );
    t.keys(&["q"]);
    // `stty` prints its line after `top-exit=`: wait for it too, either way it says.
    let after = t.wait_for("the shell again and stty's answer", 10, |s| {
        s.contains("top-exit=")
            && s.lines()
                .any(|l| l.trim() == "icanon" || l.trim() == "-icanon")
    });
    assert!(after.contains("top-exit=0"), "{after}");
    assert!(
        after.contains("before-top"),
        "the screen before top is back:\n{after}"
    );
    assert!(!after.contains("LATEST VALUES"), "{after}");
    assert!(
        after.lines().any(|l| l.trim() == "icanon"),
        "the terminal was left in raw mode:\n{after}"
    );
}

/// SGR parameters that set a colour (30-38, 40-48, 90-97, 100-107).
fn has_colour(escaped: &str) -> bool {
    escaped.split("\x1b[").skip(1).any(|seq| {
        let params = seq.split('m').next().unwrap_or("");
        params.split(';').any(|p| {
            matches!(
                p.parse::<u32>(),
                Ok(30..=38 | 40..=48 | 90..=97 | 100..=107)
            )
        })
    })
}

#[test]
fn top_paints_states_in_colour_on_a_colour_terminal() {
    let g = Gateway::new(&sim_device("ox-1", "stable", 200));
    let _d = g.start();
    wait_path(&g.path("live.sock"), 30);
    let t = Tmux::start("top-colour", &top_command(&g), &[]);
    t.wait_for("the device row", 30, |s| s.contains("connected"));
    assert!(has_colour(&t.screen_with_escapes()));
}

#[test]
fn top_with_no_color_emits_no_colour_and_still_says_everything_in_words() {
    let g = Gateway::new(&sim_device("ox-1", "stable", 200));
    let _d = g.start();
    wait_path(&g.path("live.sock"), 30);
    let t = Tmux::start("top-nocolour", &top_command(&g), &[("NO_COLOR", "1")]);
    // The device row can show before its first readings are scored: wait for both.
    let screen = t.wait_for("the device row and the patient's NEWS2 band", 30, |s| {
        s.contains("connected") && s.contains("low")
    });
    assert!(screen.contains("HEALTHY"), "{screen}");
    let escaped = t.screen_with_escapes();
    assert!(!has_colour(&escaped), "colour with NO_COLOR:\n{escaped:?}");
}

#[test]
fn top_without_a_daemon_says_it_cannot_reach_it_and_quits_on_q() {
    let g = Gateway::new(&sim_device("ox-1", "stable", 200));
    let t = Tmux::start("top-nodaemon", &top_command(&g), &[]);
    t.wait_for("the unreachable message", 30, |s| {
        s.contains("cannot reach the daemon") && s.contains("not running")
    });
    t.keys(&["q"]);
    t.wait_for("the shell again", 10, |s| s.contains("top-exit=0"));
}

/// Issue 17, acceptance 1 and 4: the demo through `top`: within a minute the deteriorating
/// patient's alerts show at high priority, and `q` ends the demo with its summary.
#[test]
fn demo_top_shows_the_deteriorating_patient_alerting_and_q_ends_the_demo_with_its_summary() {
    let t = Tmux::start(
        "demo-top",
        &format!("{BIN} demo --top --broker embedded --seconds 120; echo demo-exit=$?"),
        &[],
    );
    t.wait_for("the demo's devices", 30, |s| {
        s.contains("sim-deteriorating") && s.contains("sim-faulty") && s.contains("demo x1")
    });
    let screen = t.wait_for("a HIGH NEWS2 for the deteriorating patient", 60, |s| {
        s.lines()
            .any(|l| l.contains("demo-patient-deteriorating") && l.contains("HIGH"))
    });
    assert!(
        screen
            .lines()
            .any(|l| l.contains("demo-patient-faulty-probe") && l.contains("technical:")),
        "the faulty probe's technical alarm:\n{screen}"
    );
    t.keys(&["q"]);
    let end = t.wait_for("the demo's end", 60, |s| s.contains("demo-exit="));
    assert!(end.contains("demo-exit=0"), "{end}");
    assert!(end.contains("alerts raised:"), "{end}");
    assert!(!end.contains("LATEST VALUES"), "{end}");
}
