package dev.optsidecar.server.model;

import dev.optsidecar.server.optim.EmaShadow;
import dev.optsidecar.server.optim.Lookahead;
import dev.optsidecar.server.optim.schedule.Schedule;

import java.util.List;

/**
 * What composes around the groups' algorithms: the lr schedule, EMA shadows, Lookahead, gradient
 * clipping and whether to measure the update norm.
 *
 * @param lookahead null when not configured
 */
record Training(Schedule schedule, List<EmaShadow> ema, Lookahead lookahead, double clipGradNorm,
                boolean reportUpdateNorm) {}
