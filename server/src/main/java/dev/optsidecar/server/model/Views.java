package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.optim.EmaShadow;
import dev.optsidecar.server.optim.Lookahead;

import java.util.ArrayList;
import java.util.List;

/**
 * The views a model serves and how a request resolves to one. Train is θ. Eval is the
 * algorithm's own eval point when it has one (Schedule-Free's x), else Lookahead's slow weights,
 * else the first EMA shadow; responses carry the concrete label (VIEW_EVAL, VIEW_SLOW or VIEW_EMA
 * with its decay). A view the model lacks is INVALID_ARGUMENT, never silently train.
 */
final class Views {
    private Views() {}

    static View label(ViewKind kind) {
        return View.newBuilder().setKind(kind).build();
    }

    static View emaLabel(EmaShadow shadow) {
        return View.newBuilder().setKind(ViewKind.VIEW_EMA).setEmaDecay(shadow.decay()).build();
    }

    private static boolean hasEvalPoint(Model m) {
        return m.groups().get(0).algorithm.evalView() != null;
    }

    static List<View> available(Model m) {
        List<View> views = new ArrayList<>();
        views.add(label(ViewKind.VIEW_TRAIN));
        if (hasEvalPoint(m) || m.training().lookahead() != null || !m.training().ema().isEmpty()) {
            views.add(label(ViewKind.VIEW_EVAL));
        }
        for (EmaShadow shadow : m.training().ema()) {
            views.add(emaLabel(shadow));
        }
        if (m.training().lookahead() != null) {
            views.add(label(ViewKind.VIEW_SLOW));
        }
        return views;
    }

    static Model.ResolvedView resolve(Model m, View requested, String field, boolean allowNone) {
        ViewKind kind = requested.getKind();
        switch (kind) {
            case VIEW_KIND_UNSPECIFIED, VIEW_TRAIN -> {
                return new Model.ResolvedView(label(ViewKind.VIEW_TRAIN), ViewSource.TRAIN);
            }
            case VIEW_NONE -> {
                if (allowNone) {
                    return null;
                }
            }
            case VIEW_EVAL -> {
                if (hasEvalPoint(m)) {
                    return new Model.ResolvedView(label(ViewKind.VIEW_EVAL), ViewSource.evalPoint());
                }
                if (m.training().lookahead() != null) {
                    return slow(m);
                }
                if (!m.training().ema().isEmpty()) {
                    return ema(m, 0, field);
                }
            }
            case VIEW_EMA -> {
                if (!m.training().ema().isEmpty()) {
                    return ema(m, indexOfDecay(m, requested.getEmaDecay(), field), field);
                }
            }
            case VIEW_SLOW -> {
                if (m.training().lookahead() != null) {
                    return slow(m);
                }
            }
            case VIEW_SLOT -> {
                return slot(m, requested.getSlot(), field);
            }
            default -> { }
        }
        List<String> names = new ArrayList<>();
        for (View v : available(m)) {
            names.add(v.getKind() == ViewKind.VIEW_EMA ? "VIEW_EMA(" + v.getEmaDecay() + ")" : v.getKind().name());
        }
        throw OptError.invalid("%s: model '%s' (%s) has no %s view; available: %s", field, Echo.of(m.name()),
                m.config().getAlgorithm(), kind == ViewKind.UNRECOGNIZED ? "such" : kind.name(),
                String.join(", ", names));
    }

    private static Model.ResolvedView slow(Model m) {
        return new Model.ResolvedView(label(ViewKind.VIEW_SLOW), ViewSource.slot(Lookahead.SLOW_SLOT));
    }

    private static int indexOfDecay(Model m, double decay, String field) {
        List<EmaShadow> ema = m.training().ema();
        if (decay == 0) {
            return 0;
        }
        for (int i = 0; i < ema.size(); i++) {
            if (ema.get(i).decay() == decay) {
                return i;
            }
        }
        List<String> decays = ema.stream().map(e -> Double.toString(e.decay())).toList();
        throw OptError.invalid("%s.ema_decay: model '%s' has no EMA shadow with decay %s; its shadows: %s",
                field, Echo.of(m.name()), decay, String.join(", ", decays));
    }

    private static Model.ResolvedView ema(Model m, int index, String field) {
        EmaShadow shadow = m.training().ema().get(index);
        if (m.emaUpdates[index] == 0) {
            throw OptError.precondition("%s: the EMA shadow with decay %s of model '%s' has had no update yet"
                    + " (the first comes at step %d)", field, shadow.decay(), Echo.of(m.name()), shadow.every())
                    .withReason(OptError.Reason.EMA_NOT_READY).with("model", Echo.of(m.name()));
        }
        return new Model.ResolvedView(emaLabel(shadow), ViewSource.slot(EmaShadow.slotName(index)));
    }

    private static Model.ResolvedView slot(Model m, String name, String field) {
        if (m.tensors().stream().noneMatch(t -> t.slots.contains(name))) {
            throw OptError.invalid("%s.slot: model '%s' has no state slot '%s'; its slots: %s", field, Echo.of(m.name()),
                    Echo.of(name), String.join(", ", m.tensors().get(0).slots));
        }
        View label = View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot(name).build();
        return new Model.ResolvedView(label, ViewSource.slot(name), name);
    }

    /**
     * The tensors a Pull reads: those selected (all when none are), in tensor order; each must
     * exist and, for a state slot, have it.
     */
    static List<TensorEntry> select(Model m, Model.ResolvedView view, List<Integer> selected, String field) {
        List<TensorEntry> chosen = new ArrayList<>();
        if (selected.isEmpty()) {
            chosen.addAll(m.tensors());
        } else {
            boolean[] seen = new boolean[m.tensorCount()];
            for (int i : selected) {
                if (i < 0 || i >= seen.length) {
                    throw OptError.invalid("%s: tensor index %d out of range; the model has %d tensors", field,
                            Integer.toUnsignedLong(i), seen.length);
                }
                if (seen[i]) {
                    throw OptError.invalid("%s: tensor index %d listed twice", field, i);
                }
                seen[i] = true;
            }
            for (TensorEntry t : m.tensors()) {
                if (seen[t.index]) {
                    chosen.add(t);
                }
            }
        }
        if (view.slot() != null) {
            for (TensorEntry t : chosen) {
                if (!t.slots.contains(view.slot())) {
                    throw OptError.invalid("%s: %s has no state slot '%s' (its slots: %s); select the tensors"
                            + " that have it", field, t.describe(), Echo.of(view.slot()), String.join(", ", t.slots));
                }
            }
        }
        return chosen;
    }

    /** Slot names of the wrappers, after the algorithm's own. */
    static List<String> wrapperSlots(int emaCount, Lookahead lookahead) {
        List<String> names = new ArrayList<>();
        for (int i = 0; i < emaCount; i++) {
            names.add(EmaShadow.slotName(i));
        }
        if (lookahead != null) {
            names.add(Lookahead.SLOW_SLOT);
            if (lookahead.pullback() == Lookahead.Pullback.PULLBACK) {
                names.add(Lookahead.CACHE_SLOT);
            }
        }
        return names;
    }
}
