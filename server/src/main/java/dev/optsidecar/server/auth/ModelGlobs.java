package dev.optsidecar.server.auth;

import java.util.List;
import java.util.regex.Pattern;

/**
 * The models a token may use: glob patterns where {@code *} stands for any run of characters
 * (none included) and every other character for itself, e.g. {@code *}, {@code team-a/*},
 * {@code run-*-eval}, {@code mlp}. A name matches when any one pattern matches all of it.
 */
final class ModelGlobs {
    private final List<String> globs;
    private final List<Pattern> patterns;

    ModelGlobs(List<String> globs) {
        this.globs = List.copyOf(globs);
        this.patterns = this.globs.stream().map(ModelGlobs::compile).toList();
    }

    private static Pattern compile(String glob) {
        StringBuilder regex = new StringBuilder();
        int start = 0;
        for (int star = glob.indexOf('*'); star >= 0; star = glob.indexOf('*', start)) {
            regex.append(Pattern.quote(glob.substring(start, star))).append(".*");
            start = star + 1;
        }
        regex.append(Pattern.quote(glob.substring(start)));
        return Pattern.compile(regex.toString(), Pattern.DOTALL);
    }

    boolean matches(String model) {
        for (Pattern p : patterns) {
            if (p.matcher(model).matches()) {
                return true;
            }
        }
        return false;
    }

    List<String> globs() {
        return globs;
    }

    @Override
    public String toString() {
        return String.join(", ", globs);
    }
}
