package dev.optsidecar.server.conformance;

import com.fasterxml.jackson.databind.JsonNode;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import java.util.stream.Stream;

/**
 * Replays reference case files through a server over the real gRPC path, with the Java client:
 * registers the case's model, feeds the recorded gradients step by step, and compares every
 * recorded value within the tolerance the case file carries.
 */
public final class ConformanceRunner {
    private final OptSidecarClient client;
    private final PrintStream out;

    public ConformanceRunner(OptSidecarClient client, PrintStream out) {
        this.client = client;
        this.out = out;
    }

    /** Runs every case in {@code dir} (index.json is a listing, not a case) and prints a line each. */
    public Summary runAll(Path dir) throws IOException {
        List<Path> files;
        try (Stream<Path> list = Files.list(dir)) {
            files = list.filter(p -> p.getFileName().toString().endsWith(".json"))
                    .filter(p -> !p.getFileName().toString().equals("index.json"))
                    .sorted()
                    .toList();
        }
        List<CaseResult> results = new ArrayList<>();
        for (Path file : files) {
            CaseResult r = runFile(file);
            out.println(r.line());
            results.add(r);
        }
        Summary summary = new Summary(results);
        if (summary.skipped() > 0) {
            out.println("skipped: " + summary.skipped());
        }
        out.println("conformance: " + summary.passed() + " passed, " + summary.failed() + " failed");
        return summary;
    }

    CaseResult runFile(Path file) {
        String fallbackName = file.getFileName().toString().replaceFirst("\\.json$", "");
        ReferenceCase c;
        try {
            c = ReferenceCase.read(file);
        } catch (IOException | RuntimeException e) {
            return new CaseResult(fallbackName, CaseResult.Outcome.FAIL, Double.POSITIVE_INFINITY,
                    "cannot read case: " + e.getMessage());
        }
        String reason = c.unsupportedReason();
        if (reason != null) {
            return new CaseResult(c.name, CaseResult.Outcome.SKIP, 0, reason);
        }
        String model = "conformance-" + c.name + "-" + UUID.randomUUID();
        try {
            return run(c, model);
        } catch (StatusRuntimeException e) {
            if (e.getStatus().getCode() == Status.Code.UNIMPLEMENTED) {
                return new CaseResult(c.name, CaseResult.Outcome.SKIP, 0, "not implemented: "
                        + e.getStatus().getDescription());
            }
            return new CaseResult(c.name, CaseResult.Outcome.FAIL, Double.POSITIVE_INFINITY,
                    "server error " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
        } catch (IOException | RuntimeException e) {
            return new CaseResult(c.name, CaseResult.Outcome.FAIL, Double.POSITIVE_INFINITY, e.toString());
        } finally {
            try {
                client.delete(model);
            } catch (StatusRuntimeException ignored) {
                // never registered
            }
        }
    }

    private CaseResult run(ReferenceCase c, String model) throws IOException {
        List<float[]> params = c.initialParams();
        List<TensorData> paramData = params.stream().map(TensorData::of).toList();
        client.register(c.spec(model), paramData);
        ModelInfo info = client.describe(model);
        boolean hasEval = info.getViewsList().stream().anyMatch(v -> v.getKind() == ViewKind.VIEW_EVAL);
        Comparison cmp = new Comparison(c.atol, c.rtol, c.scalarRtol);
        List<String> names = c.paramNames();
        List<float[]> train = new ArrayList<>();
        List<float[]> eval = new ArrayList<>();
        for (float[] p : params) {
            train.add(new float[p.length]);
            eval.add(new float[p.length]);
        }
        try (Trainer trainer = client.trainer(model, "conformance")) {
            for (JsonNode step : c.steps()) {
                int t = step.path("t").asInt();
                List<TensorData> grads = ReferenceCase.decodeAll(step.path("grads")).stream().map(TensorData::of).toList();
                StepResult result = trainer.step(grads, train.stream().map(TensorData::of).toList());
                if (result.getVersion() != t) {
                    cmp.fail("step " + t + ": server reports version " + result.getVersion());
                }
                if (step.has("lr")) {
                    cmp.scalar("step " + t + " lr", result.getLr(0).getLr(), step.path("lr").asDouble());
                }
                if (step.has("train")) {
                    cmp.tensors("step " + t + " train", names, train, ReferenceCase.decodeAll(step.path("train")));
                }
                if (step.has("eval")) {
                    if (!hasEval) {
                        cmp.fail("step " + t + ": the case records an eval view but the model serves none");
                    } else {
                        client.pull(model, View.newBuilder().setKind(ViewKind.VIEW_EVAL).build(),
                                eval.stream().map(TensorData::of).toList());
                        cmp.tensors("step " + t + " eval", names, eval, ReferenceCase.decodeAll(step.path("eval")));
                    }
                }
            }
        }
        if (cmp.passed()) {
            return new CaseResult(c.name, CaseResult.Outcome.PASS, cmp.worst(), "at " + cmp.worstWhere());
        }
        return new CaseResult(c.name, CaseResult.Outcome.FAIL, cmp.worst(), cmp.firstFailure());
    }

    /** Counts of a run. */
    public record Summary(List<CaseResult> results) {
        public long passed() {
            return count(CaseResult.Outcome.PASS);
        }

        public long failed() {
            return count(CaseResult.Outcome.FAIL);
        }

        public long skipped() {
            return count(CaseResult.Outcome.SKIP);
        }

        /** Names of the cases with the given outcome (PASS, FAIL or SKIP). */
        public List<String> names(String outcome) {
            return results.stream().filter(r -> r.outcome().name().equals(outcome)).map(CaseResult::name).toList();
        }

        private long count(CaseResult.Outcome o) {
            return results.stream().filter(r -> r.outcome() == o).count();
        }
    }
}
