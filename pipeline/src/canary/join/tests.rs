use super::*;

const MIN: i64 = 60_000;

fn exposure(id: &str, arm: ExposureArm, at: i64, items: &[&str]) -> Exposure {
    Exposure {
        request_id: id.to_owned(),
        unit_id: format!("unit-{id}"),
        consumer: "ads".to_owned(),
        arm,
        migration_id: "m1".to_owned(),
        share: 0.5,
        models: Vec::new(),
        items: items.iter().map(|s| (*s).to_owned()).collect(),
        served_at: at,
    }
}

fn click(id: &str, item: &str, at: i64) -> FeedbackEvent {
    FeedbackEvent {
        request_id: id.to_owned(),
        item_id: item.to_owned(),
        kind: FeedbackKind::Click,
        value: 1.0,
        event_time: at,
    }
}

/// Feedback that reached Kafka at its event time.
fn feed(j: &mut Join, f: FeedbackEvent) {
    let at = f.event_time;
    j.feedback(f, at);
}

fn arm(j: &Join, arm: ExposureArm) -> ArmOutcomes {
    j.outcomes()
        .get(&("ads".to_owned(), "m1".to_owned(), arm))
        .copied()
        .unwrap_or_default()
}

#[test]
fn feedback_is_attributed_once_in_its_window_and_early_feedback_waits() {
    let mut j = Join::new(JoinConfig::default());
    j.exposure(exposure("r1", ExposureArm::Control, 0, &["a", "b"]));
    j.exposure(exposure("r1", ExposureArm::Control, 0, &["a", "b"])); // a producer retry
    feed(&mut j, click("r1", "b", MIN));
    feed(&mut j, click("r1", "b", MIN + 1)); // the same click again
    feed(&mut j, click("r1", "z", MIN)); // not shown
    // Read before its exposure (the topics are read side by side).
    feed(&mut j, click("r2", "c", 2 * MIN));
    j.exposure(exposure("r2", ExposureArm::Canary, MIN, &["c"]));
    j.exposure(exposure("r3", ExposureArm::Canary, MIN, &["d"]));
    feed(&mut j, click("r3", "d", MIN + 31 * MIN)); // after the 30-minute window
    assert_eq!(j.open(), 3);
    assert_eq!(j.unattributed, 2);

    // Nothing is final before window + lateness.
    j.advance(30 * MIN);
    assert_eq!(arm(&j, ExposureArm::Control).click.n, 0);
    j.advance(36 * MIN + 1);
    let (control, canary) = (arm(&j, ExposureArm::Control), arm(&j, ExposureArm::Canary));
    assert_eq!((control.click.n, control.click.sum), (1, 1.0));
    assert_eq!((canary.click.n, canary.click.sum), (2, 1.0));
    assert_eq!(j.open(), 0);

    // Feedback for a final exposure is late: counted, the tallies unchanged.
    feed(&mut j, click("r2", "c", 3 * MIN));
    assert_eq!(j.late, 1);
    assert_eq!(arm(&j, ExposureArm::Canary).click.sum, 1.0);
    // An exposure read after the watermark passed it is final at once.
    j.exposure(exposure("r4", ExposureArm::Control, 0, &["a"]));
    assert_eq!(arm(&j, ExposureArm::Control).click.n, 2);
}

#[test]
fn feedback_without_an_exposure_is_unmatched_once_it_can_no_longer_come() {
    let mut j = Join::new(JoinConfig::default());
    feed(&mut j, click("gone", "a", 0));
    feed(&mut j, click("gone", "b", 0));
    feed(
        &mut j,
        FeedbackEvent {
            kind: FeedbackKind::Unknown,
            ..click("other", "a", 0)
        },
    );
    j.advance(35 * MIN - 1);
    assert_eq!(j.unmatched, 0);
    j.advance(35 * MIN);
    assert_eq!(j.unmatched, 2);
    // Conversions and dwell are tallied per exposure beside clicks.
    j.exposure(exposure("r", ExposureArm::Canary, 40 * MIN, &["a", "b"]));
    for (kind, value) in [
        (FeedbackKind::Conversion, 1.0),
        (FeedbackKind::Dwell, 12.5),
        (FeedbackKind::Dwell, 12.5),
    ] {
        feed(
            &mut j,
            FeedbackEvent {
                kind,
                value,
                ..click("r", "a", 41 * MIN)
            },
        );
    }
    feed(
        &mut j,
        FeedbackEvent {
            kind: FeedbackKind::Dwell,
            value: 2.5,
            ..click("r", "b", 41 * MIN)
        },
    );
    j.advance(100 * MIN);
    let canary = arm(&j, ExposureArm::Canary);
    assert_eq!(canary.conversion.sum, 1.0);
    assert_eq!(canary.click.sum, 0.0);
    assert_eq!(canary.dwell.sum, 15.0, "a repeated dwell event counts once");
}

#[test]
fn feedback_that_arrived_after_the_exposure_was_due_to_close_is_late_even_when_read_earlier() {
    let config = JoinConfig::default();
    let mut j = Join::new(config);
    j.exposure(exposure("r1", ExposureArm::Control, 0, &["a"]));
    let due = config.window_ms + config.lateness_ms;
    // Clicked in the window, but the record reached Kafka after the exposure was due to close:
    // a replay may read it before the watermark closes the exposure; it is late all the same.
    j.feedback(click("r1", "a", MIN), due + 1);
    assert_eq!(j.late, 1);
    // Arriving exactly when it is due still counts.
    j.exposure(exposure("r2", ExposureArm::Control, 0, &["a"]));
    j.feedback(click("r2", "a", MIN), due);
    j.advance(due);
    assert_eq!(arm(&j, ExposureArm::Control).click.sum, 1.0);
    assert_eq!(arm(&j, ExposureArm::Control).click.n, 2);
}
