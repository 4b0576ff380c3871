package dev.optsidecar.server.engine.kernel;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** The written catalogue (KERNELS.md) lists exactly the kernels of {@link Kernel}, with their slots, scalars and flags in order. */
class KernelCatalogueTest {
    private static final Path DOCUMENT = Path.of("src/main/java/dev/optsidecar/server/engine/kernel/KERNELS.md");
    private static final Pattern HEADING = Pattern.compile("^### `([a-z0-9_]+)`$");
    private static final Pattern LIST = Pattern.compile("^- (slots|scalars|flags): (.*)$");

    @Test
    void theDocumentListsEveryKernelAsDeclared() throws IOException {
        Map<String, Map<String, List<String>>> documented = parse(Files.readAllLines(DOCUMENT));
        Map<String, Map<String, List<String>>> declared = new LinkedHashMap<>();
        for (Kernel k : Kernel.values()) {
            declared.put(k.id(), Map.of("slots", k.slots(), "scalars", k.scalars(), "flags", k.flags()));
        }
        assertEquals(declared.keySet(), documented.keySet(), "kernel ids, in catalogue order");
        declared.forEach((id, lists) -> assertEquals(lists, documented.get(id), "kernel " + id));
    }

    private static Map<String, Map<String, List<String>>> parse(List<String> lines) {
        Map<String, Map<String, List<String>>> kernels = new LinkedHashMap<>();
        Map<String, List<String>> current = null;
        for (String line : lines) {
            Matcher heading = HEADING.matcher(line);
            Matcher list = LIST.matcher(line);
            if (heading.matches()) {
                current = new LinkedHashMap<>();
                kernels.put(heading.group(1), current);
            } else if (current != null && list.matches()) {
                current.put(list.group(1), names(list.group(2)));
            }
        }
        return kernels;
    }

    /** "`a`, `b`" or "(none)". */
    private static List<String> names(String text) {
        if (text.equals("(none)")) {
            return List.of();
        }
        List<String> names = new ArrayList<>();
        for (String item : Arrays.asList(text.split(",\\s*"))) {
            names.add(item.replace("`", "").trim());
        }
        return names;
    }
}
