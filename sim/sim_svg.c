/*
 * sim_svg.c - the SVG chart. Long series are thinned to at most 2000 points
 * per line (each kept point is the maximum of its stretch, so peaks show).
 */
#include "sim/sim_svg.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>

#define W 960
#define H 600
#define ML 80 /* left margin */
#define MR 30
#define P1_TOP 70
#define P1_H 300
#define P2_TOP 430
#define P2_H 110
#define MAXPTS 2000

static void svg_text(FILE *f, const char *s)
{
    for (; s != NULL && *s; s++) {
        switch (*s) {
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '&':
            fputs("&amp;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            fputc(*s, f);
        }
    }
}

/* A "nice" axis maximum at or above v: 1, 2 or 5 times a power of ten. */
static double nice_max(double v)
{
    double p, m;

    if (v <= 0)
        return 1;
    p = pow(10, floor(log10(v)));
    m = v / p;
    return (m <= 1     ? 1
            : m <= 1.2 ? 1.2
            : m <= 1.6 ? 1.6
            : m <= 2   ? 2
            : m <= 2.4 ? 2.4
            : m <= 4   ? 4
            : m <= 6   ? 6
            : m <= 8   ? 8
                       : 10) *
           p;
}

typedef double (*field_fn)(const struct sim_model_sample *s);

static double f_active(const struct sim_model_sample *s)
{
    return (double)s->active;
}
static double f_tcp_ports(const struct sim_model_sample *s)
{
    return (double)s->tcp_ports_in_use;
}
static double f_udp_ports(const struct sim_model_sample *s)
{
    return (double)s->udp_ports_in_use;
}
static double f_refused(const struct sim_model_sample *s)
{
    return (double)s->refused_interval;
}

static void polyline(FILE *f, const struct sim_model_sample *s, size_t n, field_fn fn, double tmax,
                     double ymax, int top, int h, const char *color, double width)
{
    size_t step = n > MAXPTS ? (n + MAXPTS - 1) / MAXPTS : 1;

    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%.1f\" points=\"", color,
            width);
    for (size_t i = 0; i < n; i += step) {
        double v = 0, t = s[i].t_ms;
        for (size_t j = i; j < i + step && j < n; j++)
            if (fn(&s[j]) > v)
                v = fn(&s[j]);
        fprintf(f, "%.1f,%.1f ", ML + (W - ML - MR) * (tmax > 0 ? t / tmax : 0),
                top + h - h * (v / ymax));
    }
    fputs("\"/>\n", f);
}

static void axes(FILE *f, int top, int h, double ymax, double tmax, const char *ylabel)
{
    fprintf(f,
            "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#fafafa\" "
            "stroke=\"#888\"/>\n",
            ML, top, W - ML - MR, h);
    for (int i = 0; i <= 4; i++) {
        double y = top + h - h * i / 4.0;
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", ML, y,
                W - MR, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\">%.6g</text>\n",
                ML - 6, y + 4, ymax * i / 4.0);
    }
    /* time ticks at round numbers of seconds */
    if (tmax > 0) {
        double step = nice_max(tmax / 1000.0 / 6.0);
        for (int i = 0; i <= 12 && step * i <= tmax / 1000.0 + 1e-9; i++) {
            double x = ML + (W - ML - MR) * (step * i * 1000.0 / tmax);
            fprintf(f,
                    "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" "
                    "font-size=\"11\">%.6g</text>\n",
                    x, top + h + 15, step * i);
        }
    }
    fprintf(f,
            "<text x=\"16\" y=\"%d\" font-size=\"12\" transform=\"rotate(-90 16 %d)\" "
            "text-anchor=\"middle\">",
            top + h / 2, top + h / 2);
    svg_text(f, ylabel);
    fputs("</text>\n", f);
}

int sim_svg_write(FILE *f, const struct sim_model_sample *s, size_t n,
                  const struct sim_svg_info *info)
{
    double tmax = n ? s[n - 1].t_ms : 0, y1 = 0, y2 = 0;
    bool tcp = false, udp = false;

    for (size_t i = 0; i < n; i++) {
        tcp = tcp || s[i].tcp_ports_in_use > 0;
        udp = udp || s[i].udp_ports_in_use > 0;
        if ((double)s[i].active > y1)
            y1 = (double)s[i].active;
        if ((double)s[i].tcp_ports_in_use > y1)
            y1 = (double)s[i].tcp_ports_in_use;
        if ((double)s[i].udp_ports_in_use > y1)
            y1 = (double)s[i].udp_ports_in_use;
        if ((double)s[i].refused_interval > y2)
            y2 = (double)s[i].refused_interval;
    }
    if ((double)info->ports_total > y1)
        y1 = (double)info->ports_total;
    y1 = nice_max(y1 * 1.05);
    y2 = nice_max(y2);

    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            W, H, W, H);
    fputs("<text x=\"80\" y=\"28\" font-size=\"17\" font-weight=\"bold\">", f);
    svg_text(f, info->title);
    fputs("</text>\n", f);
    if (info->subtitle != NULL) {
        fputs("<text x=\"80\" y=\"48\" font-size=\"12\" fill=\"#444\">", f);
        svg_text(f, info->subtitle);
        fputs("</text>\n", f);
    }
    axes(f, P1_TOP, P1_H, y1, tmax, "mappings / ports");
    if (info->ports_total > 0) {
        double y = P1_TOP + P1_H - P1_H * ((double)info->ports_total / y1);
        fprintf(f,
                "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#c00\" "
                "stroke-dasharray=\"6 4\"/>\n",
                ML, y, W - MR, y);
    }
    /* ports under mappings: with eim they coincide and both stay visible; each
     * protocol's ports against the pool size, since each has a pool of its own */
    if (tcp || !udp)
        polyline(f, s, n, f_tcp_ports, tmax, y1, P1_TOP, P1_H, "#2ca02c", 3.0);
    if (udp)
        polyline(f, s, n, f_udp_ports, tmax, y1, P1_TOP, P1_H, "#ff7f0e", 3.0);
    polyline(f, s, n, f_active, tmax, y1, P1_TOP, P1_H, "#1f77b4", 1.2);
    axes(f, P2_TOP, P2_H, y2, tmax, "refused");
    polyline(f, s, n, f_refused, tmax, y2, P2_TOP, P2_H, "#d62728", 1.2);
    fprintf(f,
            "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"12\">virtual time "
            "(s)</text>\n",
            (W + ML) / 2, H - 22);
    /* legend: row 1 the upper panel's lines, row 2 the pool size and the lower panel */
    fputs("<g font-size=\"12\">"
          "<line x1=\"560\" y1=\"44\" x2=\"584\" y2=\"44\" stroke=\"#1f77b4\" stroke-width=\"2\"/>"
          "<text x=\"590\" y=\"48\">live mappings</text>",
          f);
    if (tcp || !udp)
        fputs("<line x1=\"680\" y1=\"44\" x2=\"704\" y2=\"44\" stroke=\"#2ca02c\" "
              "stroke-width=\"2\"/><text x=\"710\" y=\"48\">TCP ports in use</text>",
              f);
    if (udp)
        fprintf(f,
                "<line x1=\"%d\" y1=\"44\" x2=\"%d\" y2=\"44\" stroke=\"#ff7f0e\" "
                "stroke-width=\"2\"/><text x=\"%d\" y=\"48\">UDP ports in use</text>",
                tcp ? 815 : 680, tcp ? 839 : 704, tcp ? 845 : 710);
    fputs("<line x1=\"560\" y1=\"62\" x2=\"584\" y2=\"62\" stroke=\"#d62728\" stroke-width=\"2\"/>"
          "<text x=\"590\" y=\"66\">refused per interval (lower panel)</text>"
          "<line x1=\"815\" y1=\"62\" x2=\"839\" y2=\"62\" stroke=\"#c00\" "
          "stroke-dasharray=\"6 4\"/><text x=\"845\" y=\"66\">pool size</text></g>\n",
          f);
    fputs("</svg>\n", f);
    return ferror(f) ? -EIO : 0;
}
